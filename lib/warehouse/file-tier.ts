/**
 * FileTier: fixed-size slots in one preallocated file, read and written with O_DIRECT. Every slot
 * is self-describing through a header in a table at the front of the file (docs/format.md), so a
 * restart rebuilds the index by reading the table, and a torn or corrupt slot fails its checksum.
 */
import { readFile, rename, rmdir, stat, unlink, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';

import { ensureDir } from '../core/dirs.js';

import type { BlockCodec } from '../core/codec.js';
import { TransferBatch as Batch, type IoEngine, type TransferBatch } from '../core/engine.js';
import { fromSystemError, KvtierError } from '../core/errors.js';
import { openFile, type KvFile } from '../core/file.js';
import { native, type NativeAddon } from '../core/native.js';
import { Region } from '../core/region.js';
import { checkCodecRecord, codecRecord, codecSpec, type CodecRecord } from './tier-codec.js';
import type { FoundBlock, ScanResult, SlotBlock, SlotPlace, Tier, TierCodecInfo } from './tier.js';
import { KEY_BYTES, type Key } from '../keys/keys.js';

export const FORMAT = 'kvtier-file-tier';
export const FORMAT_VERSION = 1;
/** Directories whose blocks are stored encoded: an older kvtier refuses them by this number. */
export const CODED_FORMAT_VERSION = 2;
const MAGIC = Buffer.from('KVTBLK01', 'latin1');
const HEADER_FIELDS = 72; // bytes covered by the header checksum
/** decodeSlotHeaders' statuses (native/io/slot_header.h). */
const SLOT_VALID = 1;
const SLOT_BAD = 3;
const PAGE = 4096;

export interface FileTierMeta {
  format: string;
  version: number;
  blockBytes: number;
  slotBytes: number;
  slots: number;
  headerBytes: number;
  payloadOffset: number;
  /** Version 2: the codec the blocks are stored with, and the bytes each one takes. */
  codec?: CodecRecord;
  storedBytes?: number;
}

export type Durability = 'none' | 'sync';

export interface FileTierOptions {
  name: string;
  dir: string;
  slots: number;
  blockBytes: number;
  durability: Durability;
  engine: IoEngine;
  /** Store blocks encoded with this codec (its decodedBytes is blockBytes). */
  codec?: BlockCodec;
}

const roundUp = (n: number, to: number): number => Math.ceil(n / to) * to;

/** A safe integer as uint64 little-endian, without a BigInt. */
function writeU64(out: Buffer, at: number, value: number): void {
  out.writeUInt32LE(value % 0x1_0000_0000, at);
  out.writeUInt32LE(Math.floor(value / 0x1_0000_0000), at + 4);
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw fromSystemError(e, `cannot use ${path}`);
  }
}

/** `dir` and those of its ancestors that do not exist yet, the outermost first. */
async function missingDirs(dir: string): Promise<string[]> {
  const missing: string[] = [];
  for (let d = resolve(dir); !(await exists(d)); d = dirname(d)) {
    missing.unshift(d);
    if (dirname(d) === d) break;
  }
  return missing;
}

/** O_DIRECT moves whole blocks of the filesystem's alignment: a payload must be a multiple. */
function checkAlignment(dir: string, blockBytes: number, align: number): void {
  if (align > 1 && blockBytes % align !== 0) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `blockBytes ${blockBytes} is not a multiple of ${align}, the O_DIRECT alignment of ${dir}: the file tier cannot write such blocks`,
    );
  }
}

export class FileTier implements Tier {
  readonly kind = 'file';
  readonly durable: boolean;
  readonly codec: TierCodecInfo | undefined;
  private generation = 0;
  /** With a codec: per slot, the CRC-32C of its stored bytes (what reads check). */
  private readonly storedSums: Uint32Array | undefined;
  /** With a codec: CRCs of bytes written by placements not yet committed or aborted. */
  private readonly pendingSums = new Map<number, number>();

  private constructor(
    readonly name: string,
    readonly dir: string,
    readonly meta: FileTierMeta,
    private readonly lock: KvFile,
    readonly file: KvFile,
    private readonly engine: IoEngine,
    durability: Durability,
    private readonly blockCodec: BlockCodec | undefined,
  ) {
    this.durable = durability === 'sync';
    if (blockCodec) {
      this.codec = { spec: codecSpec(blockCodec), storedBlockBytes: meta.storedBytes! };
      this.storedSums = new Uint32Array(meta.slots);
    }
  }

  /** Bytes of one slot's payload: the block, or its encoding padded to the O_DIRECT alignment. */
  private get payloadBytes(): number {
    return this.meta.storedBytes ?? this.meta.blockBytes;
  }

  get slots(): number {
    return this.meta.slots;
  }

  /**
   * Opens or creates the tier in `dir`. A failed open leaves the directory as it found it: what it
   * created (directories, lock, blocks file, format record) is removed again, so a retry with
   * other options starts afresh.
   */
  static async open(options: FileTierOptions): Promise<FileTier> {
    const { dir, slots, blockBytes } = options;
    if (!Number.isSafeInteger(slots) || slots < 1) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `file tier ${options.name} needs at least one block of capacity`,
      );
    }
    const undo: (() => Promise<unknown>)[] = [];
    try {
      for (const d of await missingDirs(dir)) undo.push(() => rmdir(d));
      await ensureDir(dir).catch((e: unknown) => {
        throw fromSystemError(e, `cannot create ${dir}`);
      });
      const lockPath = join(dir, 'kvtier.lock');
      const lockExisted = await exists(lockPath);
      const lock = await openFile(lockPath, { create: true, direct: false }).catch((e: unknown) => {
        throw fromSystemError(e, `cannot use ${dir}`);
      });
      undo.push(() => lock.close());
      lock.native.lock();
      // Only the holder may remove the lock file: another opener may be waiting on it.
      if (!lockExisted) undo.push(() => unlink(lockPath));
      const coding = options.codec ? codecRecord(options.codec) : undefined;
      const found = await FileTier.readMeta(dir, slots, blockBytes, coding);
      const meta = found ?? FileTier.newMeta(dir, slots, blockBytes, coding);
      const blocksPath = join(dir, 'blocks.kvt');
      const blocksExisted = await exists(blocksPath);
      const size = meta.payloadOffset + meta.slots * meta.slotBytes;
      const file = await openFile(blocksPath, { create: true, size });
      if (!blocksExisted) undo.push(() => unlink(blocksPath));
      undo.push(() => file.close());
      checkAlignment(dir, meta.storedBytes ?? blockBytes, file.offsetAlign);
      // The record goes last: a directory holds one only once its blocks file has room.
      if (!found) await FileTier.writeMeta(dir, meta);
      return new FileTier(
        options.name,
        dir,
        meta,
        lock,
        file,
        options.engine,
        options.durability,
        options.codec,
      );
    } catch (e) {
      for (const step of undo.reverse()) await step().catch(() => undefined);
      throw e;
    }
  }

  /** The directory's format record, checked against the options; undefined for a new directory. */
  private static async readMeta(
    dir: string,
    slots: number,
    blockBytes: number,
    coding: CodecRecord | undefined,
  ): Promise<FileTierMeta | undefined> {
    const path = join(dir, 'kvtier.meta.json');
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw fromSystemError(e, `cannot read ${path}`);
    }
    let meta: FileTierMeta;
    try {
      meta = JSON.parse(text) as FileTierMeta;
    } catch {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `${path} is not a kvtier format record; refusing to reuse ${dir}`,
      );
    }
    const version = meta.codec === undefined ? FORMAT_VERSION : CODED_FORMAT_VERSION;
    if (meta.format !== FORMAT || meta.version !== version) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `${dir} holds ${meta.format ?? 'unknown'} version ${meta.version ?? '?'}; this kvtier reads ${FORMAT} versions ${FORMAT_VERSION} and ${CODED_FORMAT_VERSION} (with a codec)`,
      );
    }
    if (meta.blockBytes !== blockBytes) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `${dir} holds a warehouse with blockBytes ${meta.blockBytes}, not ${blockBytes}; refusing to reinterpret it`,
      );
    }
    checkCodecRecord(dir, meta.codec, coding);
    if (coding && meta.storedBytes !== roundUp(coding.encodedBytes, meta.headerBytes)) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `${dir}'s record gives ${String(meta.storedBytes)} stored bytes per block, not ${roundUp(coding.encodedBytes, meta.headerBytes)}; refusing to reinterpret it`,
      );
    }
    if (meta.slots !== slots) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `${dir} holds ${meta.slots} slots of ${meta.slotBytes} bytes, not ${slots}; open it with the same capacity`,
      );
    }
    return meta;
  }

  /** The geometry of a new directory, from its filesystem's O_DIRECT alignment. */
  private static newMeta(
    dir: string,
    slots: number,
    blockBytes: number,
    coding: CodecRecord | undefined,
  ): FileTierMeta {
    const direct = native().probeDirect(dir);
    if (!direct.available) {
      throw new KvtierError(
        'KVTIER_NOT_AVAILABLE',
        `the file tier needs O_DIRECT in ${dir}: ${direct.reason}`,
      );
    }
    const headerBytes = Math.max(512, direct.offsetAlign ?? PAGE);
    const base = { format: FORMAT, blockBytes, slots, headerBytes };
    const payloadOffset = roundUp(slots * headerBytes, PAGE);
    if (coding) {
      // Encoded blocks are padded to the O_DIRECT alignment only (not a page): slots of a few
      // hundred KiB would otherwise lose up to 4 KiB each.
      const storedBytes = roundUp(coding.encodedBytes, headerBytes);
      const slotBytes = storedBytes;
      return {
        ...base,
        version: CODED_FORMAT_VERSION,
        slotBytes,
        payloadOffset,
        codec: coding,
        storedBytes,
      };
    }
    checkAlignment(dir, blockBytes, direct.offsetAlign ?? 1);
    return {
      ...base,
      version: FORMAT_VERSION,
      slotBytes: roundUp(blockBytes, PAGE),
      payloadOffset,
    };
  }

  /** Written whole to a temporary name, then renamed: a crash leaves no record or a whole one. */
  private static async writeMeta(dir: string, meta: FileTierMeta): Promise<void> {
    const path = join(dir, 'kvtier.meta.json');
    const tmp = `${path}.tmp`;
    try {
      await writeFile(tmp, `${JSON.stringify(meta, null, 2)}\n`, { flush: true });
      await rename(tmp, path);
    } catch (e) {
      await unlink(tmp).catch(() => undefined);
      throw fromSystemError(e, `cannot write ${path}`);
    }
  }

  place(slot: number): SlotPlace {
    const offset = this.meta.payloadOffset + slot * this.meta.slotBytes;
    if (!this.blockCodec) return { kind: 'file', file: this.file, offset };
    const coded = {
      codec: this.blockCodec,
      storedBytes: this.payloadBytes,
      stored: this.storedSums![slot]!,
    };
    return { kind: 'file', file: this.file, offset, coded };
  }

  recordStored(slot: number, checksum: number): void {
    if (this.storedSums) this.pendingSums.set(slot, checksum);
  }

  settleStored(slot: number, keep: boolean): void {
    const sum = this.pendingSums.get(slot);
    if (sum === undefined) return;
    this.pendingSums.delete(slot);
    if (keep) this.storedSums![slot] = sum;
  }

  describe(batch: TransferBatch, blocks: readonly SlotBlock[]): void {
    const { headerBytes } = this.meta;
    // Usually in slot order already (free slots are handed out in order): then no copy to sort.
    let sorted = blocks;
    for (let i = 1; i < blocks.length; i++) {
      if (blocks[i]!.slot < blocks[i - 1]!.slot) {
        sorted = [...blocks].sort((x, y) => x.slot - y.slot);
        break;
      }
    }
    const addon = native();
    // Consecutive slots share one write: fewer descriptors, and one larger O_DIRECT request.
    for (let start = 0; start < sorted.length;) {
      let end = start + 1;
      while (end < sorted.length && sorted[end]!.slot === sorted[end - 1]!.slot + 1) end++;
      const run = Buffer.alloc((end - start) * headerBytes);
      for (let i = start; i < end; i++) {
        this.encodeHeader(addon, run, (i - start) * headerBytes, sorted[i]!);
      }
      batch.write(this.file, sorted[start]!.slot * headerBytes, run);
      start = end;
    }
  }

  /**
   * One header (docs/format.md) into the zeroed `out` at `at`. Written field by field in place:
   * no key Buffer, no BigInt, no views but the one the checksum reads (a put of 32 blocks of
   * 256 KiB spent a tenth of its main-thread time here).
   */
  private encodeHeader(addon: NativeAddon, out: Buffer, at: number, block: SlotBlock): void {
    MAGIC.copy(out, at);
    // Keys are canonical hex (toKey): 16 to 32 bytes.
    out.writeUInt32LE(out.write(block.key, at + 16, KEY_BYTES, 'hex'), at + 8);
    // With a codec, the header describes what the slot holds: the stored bytes and their CRC.
    const coded = this.storedSums !== undefined;
    writeU64(out, at + 48, coded ? this.payloadBytes : block.length);
    const sum = coded ? (block.stored ?? this.storedSums[block.slot]!) : block.checksum;
    out.writeUInt32LE(sum >>> 0, at + 56);
    writeU64(out, at + 64, ++this.generation);
    const fields = new Uint8Array(out.buffer, out.byteOffset + at, HEADER_FIELDS);
    out.writeUInt32LE(addon.crc32c(fields), at + HEADER_FIELDS);
  }

  forget(batch: TransferBatch, slot: number): void {
    batch.write(this.file, slot * this.meta.headerBytes, Buffer.alloc(this.meta.headerBytes));
  }

  sync(batch: TransferBatch): void {
    batch.sync(this.file);
  }

  /**
   * Reads the header table and returns the blocks it describes (the addon decodes and checks each
   * header: docs/format.md). Where two slots claim one key (a crash between rewriting a slot and
   * forgetting the old one), the newer generation wins. A header whose checksum holds but whose
   * fields cannot describe a block of this tier (a payload length other than blockBytes, say) is
   * damage: that one slot is left free and counted in `corrupt`.
   */
  async scan(): Promise<ScanResult> {
    const { headerBytes, slots, blockBytes } = this.meta;
    const payloadBytes = this.payloadBytes;
    const chunkSlots = Math.max(1, Math.floor((8 << 20) / headerBytes));
    const buffer = Region.allocate(chunkSlots * headerBytes, { pin: false });
    const byKey = new Map<Key, FoundBlock>();
    let corrupt = 0;
    const addon = native();
    try {
      for (let first = 0; first < slots; first += chunkSlots) {
        const count = Math.min(chunkSlots, slots - first);
        const result = await this.engine.submit(
          new Batch().read(this.file, first * headerBytes, buffer, 0, count * headerBytes),
        );
        result.throwIfFailed();
        const view = new Uint8Array(buffer.buffer, 0, count * headerBytes);
        const h = addon.decodeSlotHeaders(view, headerBytes, payloadBytes);
        for (let i = 0; i < count; i++) {
          if (h.status[i] === SLOT_BAD) corrupt++;
          if (h.status[i] !== SLOT_VALID) continue;
          // With a codec the index's checksum is the stored bytes' until a read decodes the
          // block (reads.ts): no decoded copy exists to compare with before that.
          const found: FoundBlock = {
            key: h.keys.toString('hex', i * KEY_BYTES, i * KEY_BYTES + h.keyLength[i]!),
            slot: first + i,
            length: blockBytes,
            checksum: h.checksum[i]!,
            generation: h.generation[i]!,
          };
          if (this.storedSums) this.storedSums[found.slot] = found.checksum;
          this.generation = Math.max(this.generation, found.generation);
          const other = byKey.get(found.key);
          if (!other || other.generation < found.generation) byKey.set(found.key, found);
        }
      }
    } finally {
      await buffer.close();
    }
    return { blocks: [...byKey.values()], corrupt };
  }

  async close(): Promise<void> {
    await this.file.close();
    await this.lock.close();
  }
}
