/**
 * Moves into and out of a tier that stores blocks encoded (a file tier with a codec). A move in
 * brings the block into host memory (if it is not there: GPU memory, an engine's pool), encodes it
 * into a staging buffer padded to the slot, and writes that, the CRC-32C computed over the stored
 * bytes on the engine thread. A move out reads the stored bytes, checks their CRC-32C against the
 * one the tier recorded for the slot, decodes (straight into the destination when it is host
 * memory) and, when asked, checksums the decoded block. Two rounds of ordinary moves with the
 * codec work between them. Into GPU memory, where the copy engine has the decode kernels, the
 * encoded bytes cross PCIe and are decoded on the GPU (GpuCodec); a checksum asked for is then
 * that of the same block decoded on the CPU into staging (bit-identical), which is not copied.
 *
 * transfers.ts imports this file, so the rounds are made through the factory it passes in.
 */
import type { BlockCodec } from '../core/codec.js';
import { hostBytes } from '../core/bytes.js';
import type { IoEngine } from '../core/engine.js';
import { isKvtierError, type KvtierError } from '../core/errors.js';
import { GpuCodec } from '../core/gpu/codec.js';
import { DeviceRegion } from '../core/gpu/device-region.js';
import type { GpuCopyEngine } from '../core/gpu/engines.js';
import { Region } from '../core/region.js';
import type { CodedSlot, SlotPlace } from './tier.js';
import { decodeBlock, encodeBlock } from './tier-codec.js';

export interface MoveOutcome {
  ok: boolean;
  bytes: number;
  /**
   * The CRC-32C of the block as it arrived. Undefined when not asked for, or when both sides are
   * GPU memory (nothing can checksum it). Out of an encoding tier: of the decoded block.
   */
  checksum: number | undefined;
  error: KvtierError | undefined;
  /**
   * Out of an encoding tier only: whether the stored bytes passed their CRC-32C and decoded. The
   * decoded block differs from the one put in (the codec is lossy), so `checksum` cannot be
   * compared with the block's; this is the verdict instead.
   */
  intact?: boolean;
  /** Into an encoding tier: the CRC-32C of the stored bytes, for the slot header. */
  stored?: number;
  /** Into an encoding tier: the codec refused the block (a NaN, say), so it can never go there. */
  refused?: boolean;
}

export interface CodedMove {
  from: SlotPlace;
  to: SlotPlace;
  length: number;
  checksum: boolean;
}

/** What of a TransferRound the coded moves use. */
export interface Round {
  readonly length: number;
  move(from: SlotPlace, to: SlotPlace, length: number, checksum?: boolean): number;
  checksum(place: SlotPlace & { kind: 'memory' }, length: number): number;
  run(): Promise<MoveOutcome[]>;
}

type HostPlace = SlotPlace & { kind: 'memory' };

export function codedOf(place: SlotPlace): CodedSlot | undefined {
  return place.kind === 'file' ? place.coded : undefined;
}

function isHost(place: SlotPlace): place is HostPlace {
  return place.kind === 'memory' && !(place.target instanceof DeviceRegion);
}

function failed(error: KvtierError | undefined): MoveOutcome {
  return { ok: false, bytes: 0, checksum: undefined, error };
}

const CORRUPT: MoveOutcome = {
  ok: true,
  bytes: 0,
  checksum: undefined,
  error: undefined,
  intact: false,
};

/** Runs moves of which one side is an encoding tier's slot; outcomes in order. */
export async function runCoded(
  moves: readonly CodedMove[],
  newRound: () => Round,
  /** The GPU copy engine, when the round has one: it may decode on the GPU. */
  gpu?: IoEngine,
): Promise<MoveOutcome[]> {
  const out = new Array<MoveOutcome>(moves.length);
  // Stored bytes of every move side by side (aligned: slots are multiples of the O_DIRECT
  // alignment), and decoded blocks for the moves whose other side is not host memory.
  const storedAt: number[] = [];
  const decodedAt: number[] = [];
  let stored = 0;
  let decoded = 0;
  for (const m of moves) {
    const c = (codedOf(m.to) ?? codedOf(m.from))!;
    storedAt.push(stored);
    stored += c.storedBytes;
    const other = codedOf(m.to) ? m.from : m.to;
    decodedAt.push(isHost(other) ? -1 : decoded);
    if (!isHost(other)) decoded += m.length;
  }
  const storing = Region.allocate(stored, { pin: 'auto' });
  let decoding: Region | undefined;
  try {
    decoding = decoded > 0 ? Region.allocate(decoded, { pin: 'auto' }) : undefined;
  } catch (e) {
    await storing.close();
    throw e;
  }
  // Out of the tier into GPU memory: decoded there when the engine can and the bytes are pinned.
  const gpuDecode = storing.pinned && GpuCodec.unavailable(gpu) === '';
  const onGpu = moves.map((m) => gpuDecode && codedOf(m.from) !== undefined && !isHost(m.to));
  const stagedPlace = (i: number): HostPlace => ({
    kind: 'memory',
    target: decoding!,
    offset: decodedAt[i]!,
  });
  try {
    // Step 1: blocks to encode into host memory (checksummed when asked); stored bytes read.
    const first = newRound();
    const at1: number[] = [];
    moves.forEach((m, i) => {
      const into = codedOf(m.to);
      if (into) {
        if (!isHost(m.from)) at1[i] = first.move(m.from, stagedPlace(i), m.length, m.checksum);
        else if (m.checksum) at1[i] = first.checksum(m.from, m.length);
        return;
      }
      const c = codedOf(m.from)!;
      const from = m.from as SlotPlace & { kind: 'file' };
      at1[i] = first.move(
        { kind: 'file', file: from.file, offset: from.offset },
        { kind: 'memory', target: storing, offset: storedAt[i]! },
        c.storedBytes,
        true,
      );
    });
    const o1 = first.length > 0 ? await first.run() : [];
    // Step 2: the codec's work, every block at once (the codec threads share it out), then the
    // encoded blocks written and the decoded ones delivered.
    const sums: (number | undefined)[] = [];
    const work = moves.map(async (m, i): Promise<void> => {
      const r = at1[i] === undefined ? undefined : o1[at1[i]]!;
      if (r && !r.ok) {
        out[i] = failed(r.error);
        return;
      }
      const into = codedOf(m.to);
      if (into) {
        sums[i] = r?.checksum;
        const src = isHost(m.from)
          ? hostBytes(m.from.target, m.from.offset, m.length)
          : decoding!.view(decodedAt[i], m.length);
        const dst = storing.view(storedAt[i], into.storedBytes);
        dst.fill(0, into.codec.encodedBytes);
        try {
          await encodeBlock(into.codec, src, dst.subarray(0, into.codec.encodedBytes));
        } catch (e) {
          // The codec refuses the block itself (a NaN, say) with KVTIER_BAD_ARGUMENT.
          const error = e as KvtierError;
          out[i] = { ...failed(error), refused: error.code === 'KVTIER_BAD_ARGUMENT' };
        }
        return;
      }
      const c = codedOf(m.from)!;
      if (r!.bytes !== c.storedBytes || r!.checksum !== c.stored) {
        out[i] = CORRUPT;
        return;
      }
      const dst = isHost(m.to)
        ? hostBytes(m.to.target, m.to.offset, m.length)
        : decoding!.view(decodedAt[i], m.length);
      const encoded = storing.view(storedAt[i], c.codec.encodedBytes);
      const [cpu, onDevice] = await Promise.all([
        !onGpu[i] || m.checksum ? decodes(c.codec, encoded, dst) : true,
        onGpu[i] ? decodesOnGpu(gpu!, c.codec, storing, storedAt[i]!, m.to, m.length) : undefined,
      ]);
      if (!cpu) out[i] = CORRUPT;
      else if (onDevice !== undefined && (!onDevice.ok || !m.checksum)) out[i] = onDevice;
    });
    await Promise.all(work);
    const second = newRound();
    const at2: number[] = [];
    moves.forEach((m, i) => {
      if (out[i] !== undefined) return;
      const into = codedOf(m.to);
      if (into) {
        const file = m.to as SlotPlace & { kind: 'file' };
        at2[i] = second.move(
          { kind: 'memory', target: storing, offset: storedAt[i]! },
          { kind: 'file', file: file.file, offset: file.offset },
          into.storedBytes,
          true,
        );
      } else if (onGpu[i]) {
        at2[i] = second.checksum(stagedPlace(i), m.length); // the block is on the GPU already
      } else if (!isHost(m.to)) {
        at2[i] = second.move(stagedPlace(i), m.to, m.length, m.checksum);
      } else if (m.checksum) {
        at2[i] = second.checksum(m.to, m.length);
      } else {
        out[i] = { ok: true, bytes: m.length, checksum: undefined, error: undefined, intact: true };
      }
    });
    const o2 = second.length > 0 ? await second.run() : [];
    moves.forEach((m, i) => {
      if (out[i] !== undefined) return;
      const r = o2[at2[i]!]!;
      if (!r.ok) out[i] = failed(r.error);
      else if (codedOf(m.to)) {
        out[i] = {
          ok: true,
          bytes: m.length,
          checksum: sums[i],
          error: undefined,
          stored: r.checksum,
        };
      } else {
        out[i] = {
          ok: true,
          bytes: m.length,
          checksum: r.checksum,
          error: undefined,
          intact: true,
        };
      }
    });
    return out;
  } finally {
    await storing.close();
    await decoding?.close();
  }
}

/** Decodes on the GPU into `to`; a header the codec refuses is damage, counted as corrupt. */
async function decodesOnGpu(
  gpu: IoEngine,
  codec: BlockCodec,
  src: Region,
  srcOffset: number,
  to: SlotPlace,
  length: number,
): Promise<MoveOutcome> {
  const place = to as HostPlace;
  try {
    await GpuCodec.open(gpu as GpuCopyEngine, codec).decodeToDevice(
      src,
      srcOffset,
      place.target as DeviceRegion,
      place.offset,
    );
    return { ok: true, bytes: length, checksum: undefined, error: undefined, intact: true };
  } catch (e) {
    if (isKvtierError(e, 'KVTIER_BAD_ARGUMENT')) return CORRUPT;
    return failed(e as KvtierError);
  }
}

/** Whether the block decodes: a header the codec refuses is damage, counted as corrupt. */
async function decodes(codec: BlockCodec, src: Uint8Array, dst: Uint8Array): Promise<boolean> {
  try {
    await decodeBlock(codec, src, dst);
    return true;
  } catch {
    return false;
  }
}
