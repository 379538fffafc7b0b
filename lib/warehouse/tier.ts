/**
 * A tier stores fixed-size slots. It knows where each slot's bytes are; the Warehouse decides what
 * goes where (through the BlockIndex) and moves the bytes with the engines. GPU, host and file
 * tiers implement it, and so will peer tiers.
 */
import type { Target, TransferBatch } from '../core/engine.js';
import type { KvFile } from '../core/file.js';
import type { DeviceRegion } from '../core/gpu/device-region.js';
import type { BlockCodec } from '../core/codec.js';
import type { KvCopyPlan } from '../layout/copy-plan.js';
import type { Key } from '../keys/keys.js';

export type TierKind = 'gpu' | 'host' | 'file';

/** Where a slot's payload lives: in memory an engine can copy, or in a file it can read. */
export type SlotPlace =
  | { kind: 'memory'; target: Target; offset: number }
  | { kind: 'file'; file: KvFile; offset: number; coded?: CodedSlot }
  /** Engine block `block` of a paged KV pool in GPU memory: pieces gathered and scattered. */
  | { kind: 'layout'; pool: DeviceRegion; plan: KvCopyPlan; block: number };

/**
 * A slot of a tier that stores blocks encoded (docs/codecs.md, "In the Warehouse"): moves in encode,
 * moves out check the stored bytes' CRC-32C and decode.
 */
export interface CodedSlot {
  readonly codec: BlockCodec;
  /** Bytes the slot's payload takes on disk: the encoded block padded to the O_DIRECT alignment. */
  readonly storedBytes: number;
  /** The CRC-32C of the stored bytes as the tier last recorded them: what a read must find. */
  readonly stored: number;
}

export interface BlockMeta {
  length: number;
  checksum: number;
}

/** A block about to occupy a slot. */
export interface SlotBlock extends BlockMeta {
  slot: number;
  key: Key;
  /** An encoding tier: the CRC-32C of the stored (encoded) bytes, which the slot header carries. */
  stored?: number;
}

/** A block a tier found in its storage on open. */
export interface FoundBlock extends BlockMeta {
  key: Key;
  slot: number;
  generation: number;
}

/** What a tier's storage held on open. */
export interface ScanResult {
  blocks: FoundBlock[];
  /** Slots whose description is damaged beyond use (left free). */
  corrupt: number;
}

/** What stats() says of a tier's codec. */
export interface TierCodecInfo {
  /** The codec's name and options, e.g. { codec: 'int8', scales: 'kivi' }. */
  readonly spec: { codec: string; group?: number; scales?: string };
  /** Bytes one block takes in the tier (the encoded block padded to the O_DIRECT alignment). */
  readonly storedBlockBytes: number;
}

export interface Tier {
  readonly kind: TierKind;
  readonly name: string;
  /** Capacity in blocks. */
  readonly slots: number;
  place(slot: number): SlotPlace;
  /**
   * Adds to `batch` whatever makes the slots' new content self-describing (a file tier writes the
   * slot headers, consecutive slots in one write).
   */
  describe?(batch: TransferBatch, blocks: readonly SlotBlock[]): void;
  /** Adds to `batch` what makes an explicitly deleted slot stay deleted after a restart. */
  forget?(batch: TransferBatch, slot: number): void;
  /** Blocks already stored (a file tier reopened after a restart or a crash). */
  scan?(): Promise<ScanResult>;
  /** An encoding tier: its codec ('none' when it stores blocks as they are). */
  readonly codec?: TierCodecInfo;
  /**
   * An encoding tier: notes the CRC-32C of the bytes just stored in `slot`, pending until the
   * placement that wrote them ends (settleStored): reads check the slot's settled CRC.
   */
  recordStored?(slot: number, checksum: number): void;
  /**
   * Ends what recordStored noted for `slot`: kept when the placement committed; dropped when it
   * aborted, so a victim given its old slot back is checked against its own bytes' CRC (a miss,
   * counted corrupt, if they were overwritten), never against the aborted block's.
   */
  settleStored?(slot: number, keep: boolean): void;
  /** Whether writes to this tier must be followed by a sync before put() resolves. */
  readonly durable: boolean;
  /** Adds a sync of the tier's storage to `batch` (durable tiers). */
  sync?(batch: TransferBatch): void;
  close(): Promise<void>;
}
