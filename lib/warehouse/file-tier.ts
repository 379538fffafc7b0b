/**
 * FileTier: fixed-size slots in one preallocated file, read and written with O_DIRECT. Every slot
 * is self-describing through a header in a table at the front of the file (docs/format.md), so a
 * restart rebuilds the index by reading the table, and a torn or corrupt slot fails its checksum.
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { ensureDir } from '../dirs.js';

import { TransferBatch as Batch, type IoEngine, type TransferBatch } from '../engine.js';
import { KvtierError } from '../errors.js';
import { openFile, type KvFile } from '../file.js';
import { native } from '../native.js';
import { Region } from '../region.js';
import type { FoundBlock, SlotBlock, SlotPlace, Tier } from './tier.js';
import { KEY_BYTES, type Key } from './keys.js';

export const FORMAT = 'kvtier-file-tier';
export const FORMAT_VERSION = 1;
const MAGIC = Buffer.from('KVTBLK01', 'latin1');
const HEADER_FIELDS = 72; // bytes covered by the header checksum
const PAGE = 4096;

export interface FileTierMeta {
  format: string;
  version: number;
  blockBytes: number;
  slotBytes: number;
  slots: number;
  headerBytes: number;
  payloadOffset: number;
}

export type Durability = 'none' | 'sync';

export interface FileTierOptions {
  name: string;
  dir: string;
  slots: number;
  blockBytes: number;
  durability: Durability;
  engine: IoEngine;
}

const roundUp = (n: number, to: number): number => Math.ceil(n / to) * to;

function ioError(e: unknown, what: string): never {
  const err = e as NodeJS.ErrnoException;
  if (e instanceof KvtierError) throw e;
  throw new KvtierError(
    err.code === 'ENOSPC' ? 'KVTIER_NO_SPACE' : 'KVTIER_IO',
    `${what}: ${err.message}`,
    {
      ...(err.errno !== undefined ? { errno: -err.errno } : {}),
      ...(err.syscall !== undefined ? { syscall: err.syscall } : {}),
      cause: e,
    },
  );
}

export class FileTier implements Tier {
  readonly kind = 'file';
  readonly durable: boolean;
  private generation = 0;

  private constructor(
    readonly name: string,
    readonly dir: string,
    readonly meta: FileTierMeta,
    private readonly lock: KvFile,
    readonly file: KvFile,
    private readonly engine: IoEngine,
    durability: Durability,
  ) {
    this.durable = durability === 'sync';
  }

  get slots(): number {
    return this.meta.slots;
  }

  static async open(options: FileTierOptions): Promise<FileTier> {
    const { dir, slots, blockBytes } = options;
    if (!Number.isSafeInteger(slots) || slots < 1) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `file tier ${options.name} needs at least one block of capacity`,
      );
    }
    await ensureDir(dir).catch((e: unknown) => ioError(e, `cannot create ${dir}`));
    const lock = await openFile(join(dir, 'kvtier.lock'), { create: true, direct: false }).catch(
      (e: unknown) => ioError(e, `cannot use ${dir}`),
    );
    try {
      lock.native.lock();
      const meta = await FileTier.agreeOnMeta(dir, slots, blockBytes);
      const size = meta.payloadOffset + meta.slots * meta.slotBytes;
      const file = await openFile(join(dir, 'blocks.kvt'), { create: true, size });
      return new FileTier(options.name, dir, meta, lock, file, options.engine, options.durability);
    } catch (e) {
      await lock.close();
      throw e;
    }
  }

  /** Reads the directory's format record, or writes one for a new directory; refuses a mismatch. */
  private static async agreeOnMeta(
    dir: string,
    slots: number,
    blockBytes: number,
  ): Promise<FileTierMeta> {
    const path = join(dir, 'kvtier.meta.json');
    let text: string | undefined;
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') ioError(e, `cannot read ${path}`);
    }
    if (text !== undefined) {
      let meta: FileTierMeta;
      try {
        meta = JSON.parse(text) as FileTierMeta;
      } catch {
        throw new KvtierError(
          'KVTIER_BAD_ARGUMENT',
          `${path} is not a kvtier format record; refusing to reuse ${dir}`,
        );
      }
      if (meta.format !== FORMAT || meta.version !== FORMAT_VERSION) {
        throw new KvtierError(
          'KVTIER_BAD_ARGUMENT',
          `${dir} holds ${meta.format ?? 'unknown'} version ${meta.version ?? '?'}; this kvtier reads ${FORMAT} version ${FORMAT_VERSION}`,
        );
      }
      if (meta.blockBytes !== blockBytes) {
        throw new KvtierError(
          'KVTIER_BAD_ARGUMENT',
          `${dir} holds a warehouse with blockBytes ${meta.blockBytes}, not ${blockBytes}; refusing to reinterpret it`,
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
    const direct = native().probeDirect(dir);
    if (!direct.available) {
      throw new KvtierError(
        'KVTIER_NOT_AVAILABLE',
        `the file tier needs O_DIRECT in ${dir}: ${direct.reason}`,
      );
    }
    const headerBytes = Math.max(512, direct.offsetAlign ?? PAGE);
    const meta: FileTierMeta = {
      format: FORMAT,
      version: FORMAT_VERSION,
      blockBytes,
      slotBytes: roundUp(blockBytes, PAGE),
      slots,
      headerBytes,
      payloadOffset: roundUp(slots * headerBytes, PAGE),
    };
    // Written whole to a temporary name, then renamed: a crash leaves the old record or the new.
    const tmp = `${path}.tmp`;
    await writeFile(tmp, `${JSON.stringify(meta, null, 2)}\n`, { flush: true }).catch(
      (e: unknown) => ioError(e, `cannot write ${tmp}`),
    );
    await rename(tmp, path).catch((e: unknown) => ioError(e, `cannot write ${path}`));
    return meta;
  }

  place(slot: number): SlotPlace {
    return {
      kind: 'file',
      file: this.file,
      offset: this.meta.payloadOffset + slot * this.meta.slotBytes,
    };
  }

  describe(batch: TransferBatch, blocks: readonly SlotBlock[]): void {
    const { headerBytes } = this.meta;
    const sorted = [...blocks].sort((x, y) => x.slot - y.slot);
    // Consecutive slots share one write: fewer descriptors, and one larger O_DIRECT request.
    for (let start = 0; start < sorted.length;) {
      let end = start + 1;
      while (end < sorted.length && sorted[end]!.slot === sorted[end - 1]!.slot + 1) end++;
      const run = Buffer.alloc((end - start) * headerBytes);
      for (let i = start; i < end; i++)
        this.encodeHeader(run, (i - start) * headerBytes, sorted[i]!);
      batch.write(this.file, sorted[start]!.slot * headerBytes, run);
      start = end;
    }
  }

  private encodeHeader(out: Buffer, at: number, block: SlotBlock): void {
    const header = out.subarray(at, at + this.meta.headerBytes);
    MAGIC.copy(header, 0);
    const keyBuf = Buffer.from(block.key, 'hex');
    header.writeUInt32LE(keyBuf.length, 8);
    keyBuf.copy(header, 16);
    header.writeBigUInt64LE(BigInt(block.length), 48);
    header.writeUInt32LE(block.checksum >>> 0, 56);
    header.writeBigUInt64LE(BigInt(++this.generation), 64);
    header.writeUInt32LE(native().crc32c(header.subarray(0, HEADER_FIELDS)), HEADER_FIELDS);
  }

  forget(batch: TransferBatch, slot: number): void {
    batch.write(this.file, slot * this.meta.headerBytes, Buffer.alloc(this.meta.headerBytes));
  }

  sync(batch: TransferBatch): void {
    batch.sync(this.file);
  }

  /**
   * Reads the header table and returns the blocks it describes. Where two slots claim one key (a
   * crash between rewriting a slot and forgetting the old one), the newer generation wins.
   */
  async scan(): Promise<FoundBlock[]> {
    const { headerBytes, slots, slotBytes } = this.meta;
    const chunkSlots = Math.max(1, Math.floor((8 << 20) / headerBytes));
    const buffer = Region.allocate(chunkSlots * headerBytes, { pin: false });
    const byKey = new Map<Key, FoundBlock>();
    const addon = native();
    const crc = (b: Uint8Array): number => addon.crc32c(b);
    try {
      for (let first = 0; first < slots; first += chunkSlots) {
        const count = Math.min(chunkSlots, slots - first);
        const result = await this.engine.submit(
          new Batch().read(this.file, first * headerBytes, buffer, 0, count * headerBytes),
        );
        result.throwIfFailed();
        const view = Buffer.from(buffer.buffer, 0, count * headerBytes);
        for (let i = 0; i < count; i++) {
          const at = i * headerBytes;
          if (view.compare(MAGIC, 0, 8, at, at + 8) !== 0) continue;
          const h = view.subarray(at, at + headerBytes);
          if (crc(h.subarray(0, HEADER_FIELDS)) !== h.readUInt32LE(HEADER_FIELDS)) continue;
          const keyLen = h.readUInt32LE(8);
          const length = Number(h.readBigUInt64LE(48));
          if (keyLen < 16 || keyLen > KEY_BYTES || length > slotBytes) continue;
          const found: FoundBlock = {
            key: h.toString('hex', 16, 16 + keyLen),
            slot: first + i,
            length,
            checksum: h.readUInt32LE(56),
            generation: Number(h.readBigUInt64LE(64)),
          };
          this.generation = Math.max(this.generation, found.generation);
          const other = byKey.get(found.key);
          if (!other || other.generation < found.generation) byKey.set(found.key, found);
        }
      }
    } finally {
      await buffer.close();
    }
    return [...byKey.values()];
  }

  async close(): Promise<void> {
    await this.file.close();
    await this.lock.close();
  }
}
