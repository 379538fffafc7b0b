/**
 * One round of block transfers between places (host memory, GPU memory or files), split into the
 * engines' batches and submitted together: host copies run on the memory engine's threads, file
 * reads and writes of host memory on the file engine, copies touching GPU memory on the GPU copy
 * engine, and file I/O of GPU memory on the GPU file engine. Each transfer reports success and,
 * when asked, the CRC-32C of the bytes it moved: computed on the host side of the transfer (before
 * a copy up to the GPU, after a copy down from it), since the DMA engines do not checksum.
 */
import { TransferBatch, type BatchResult, type IoEngine } from '../engine.js';
import type { KvtierError } from '../errors.js';
import { DeviceRegion } from '../gpu/device-region.js';
import type { SlotPlace } from './tier.js';

export interface TransferOutcome {
  ok: boolean;
  bytes: number;
  /** Undefined when not asked for, or when both sides are GPU memory (nothing can checksum it). */
  checksum: number | undefined;
  error: KvtierError | undefined;
}

/** The engines a round with GPU places needs. */
export interface GpuEngines {
  copy: IoEngine;
  file: IoEngine;
}

const MEMORY = 0;
const FILE = 1;
const GPU = 2;
const GPU_FILE = 3;
type BatchId = typeof MEMORY | typeof FILE | typeof GPU | typeof GPU_FILE;

interface Ref {
  batch: BatchId;
  index: number;
  /** Descriptors the transfer spans (an engine block's pieces), from `index` on; default 1. */
  count?: number;
  /** Where the checksum comes from when the moving engine cannot compute it. */
  sum?: { batch: typeof MEMORY; index: number } | { after: SlotPlace & { kind: 'memory' } };
}

function onGpu(place: SlotPlace): boolean {
  return (
    place.kind === 'layout' || (place.kind === 'memory' && place.target instanceof DeviceRegion)
  );
}

export class TransferRound {
  readonly memory = new TransferBatch();
  readonly file = new TransferBatch();
  readonly gpu = new TransferBatch();
  readonly gpuFile = new TransferBatch();
  private readonly refs: Ref[] = [];

  get length(): number {
    return this.refs.length;
  }

  /** Adds a transfer of `length` bytes; returns its index in the outcomes. */
  move(from: SlotPlace, to: SlotPlace, length: number, checksum = false): number {
    if (from.kind === 'layout' || to.kind === 'layout') return this.movePaged(from, to, checksum);
    const device = onGpu(from) || onGpu(to);
    const opts = { checksum: checksum && !device };
    if (from.kind === 'memory' && to.kind === 'memory') {
      if (!device) {
        this.refs.push({ batch: MEMORY, index: this.memory.length });
        this.memory.copy(to.target, to.offset, from.target, from.offset, length, opts);
        return this.refs.length - 1;
      }
      const ref: Ref = { batch: GPU, index: this.gpu.length };
      this.gpu.copy(to.target, to.offset, from.target, from.offset, length);
      if (checksum && !onGpu(from)) {
        // The source is host memory nobody changes during the round: checksum it alongside.
        ref.sum = { batch: MEMORY, index: this.memory.length };
        this.memory.checksum(from.target, from.offset, length);
      } else if (checksum && !onGpu(to)) {
        ref.sum = { after: { kind: 'memory', target: to.target, offset: to.offset } };
      }
      this.refs.push(ref);
    } else if (from.kind === 'file' && to.kind === 'memory') {
      const gpu = onGpu(to);
      const batch = gpu ? this.gpuFile : this.file;
      this.refs.push({ batch: gpu ? GPU_FILE : FILE, index: batch.length });
      batch.read(from.file, from.offset, to.target, to.offset, length, opts);
    } else if (from.kind === 'memory' && to.kind === 'file') {
      const gpu = onGpu(from);
      const batch = gpu ? this.gpuFile : this.file;
      this.refs.push({ batch: gpu ? GPU_FILE : FILE, index: batch.length });
      batch.write(to.file, to.offset, from.target, from.offset, length, opts);
    } else {
      throw new Error(
        'file-to-file transfers need a staging buffer; the Warehouse never plans one',
      );
    }
    return this.refs.length - 1;
  }

  /**
   * An engine block of a paged pool to or from memory: its pieces as one run of copy descriptors.
   * Files never face a paged tier directly; the Warehouse keeps a host tier below it.
   */
  private movePaged(from: SlotPlace, to: SlotPlace, checksum: boolean): number {
    const ref: Ref = { batch: GPU, index: this.gpu.length };
    if (from.kind === 'layout' && to.kind === 'memory') {
      const runs = from.plan.expand([from.block], to.offset);
      ref.count = runs.length / 3;
      this.gpu.copyRuns(to.target, from.pool, runs, 'a-to-b');
      if (checksum && !onGpu(to)) {
        ref.sum = { after: { kind: 'memory', target: to.target, offset: to.offset } };
      }
    } else if (to.kind === 'layout' && from.kind === 'memory') {
      const runs = to.plan.expand([to.block], from.offset);
      ref.count = runs.length / 3;
      this.gpu.copyRuns(to.pool, from.target, runs, 'b-to-a');
      if (checksum && !onGpu(from)) {
        ref.sum = { batch: MEMORY, index: this.memory.length };
        this.memory.checksum(from.target, from.offset, to.plan.blockBytes);
      }
    } else {
      throw new Error('a paged GPU tier moves blocks to and from memory only');
    }
    this.refs.push(ref);
    return this.refs.length - 1;
  }

  /** Adds a checksum of host memory; returns its index in the outcomes. */
  checksum(place: SlotPlace & { kind: 'memory' }, length: number): number {
    this.refs.push({ batch: MEMORY, index: this.memory.length });
    this.memory.checksum(place.target, place.offset, length);
    return this.refs.length - 1;
  }

  async run(
    memoryEngine: IoEngine,
    fileEngine: IoEngine,
    gpu?: GpuEngines,
  ): Promise<TransferOutcome[]> {
    if ((this.gpu.length > 0 || this.gpuFile.length > 0) && !gpu) {
      throw new Error('a round with GPU places needs the GPU engines');
    }
    const results: (BatchResult | undefined)[] = await Promise.all([
      this.memory.length > 0 ? memoryEngine.submit(this.memory) : undefined,
      this.file.length > 0 ? fileEngine.submit(this.file) : undefined,
      this.gpu.length > 0 ? gpu!.copy.submit(this.gpu) : undefined,
      this.gpuFile.length > 0 ? gpu!.file.submit(this.gpuFile) : undefined,
    ]);
    // Copies down from the GPU are checksummed once they have landed.
    const after = new TransferBatch();
    const afterIndex = new Map<Ref, number>();
    for (const ref of this.refs) {
      if (!ref.sum || !('after' in ref.sum)) continue;
      const moved = outcome(results[ref.batch], ref.index, ref.count);
      if (!moved.ok) continue;
      afterIndex.set(ref, after.length);
      after.checksum(ref.sum.after.target, ref.sum.after.offset, moved.bytes);
    }
    const sums = after.length > 0 ? await memoryEngine.submit(after) : undefined;
    return this.refs.map((ref) => {
      const o = outcome(results[ref.batch], ref.index, ref.count);
      if (!ref.sum || !o.ok) return o;
      const s =
        'after' in ref.sum
          ? outcome(sums, afterIndex.get(ref) ?? -1)
          : outcome(results[MEMORY], ref.sum.index);
      return s.ok ? { ...o, checksum: s.checksum } : { ...o, ok: false, error: s.error };
    });
  }
}

function outcome(result: BatchResult | undefined, i: number, count = 1): TransferOutcome {
  let error: KvtierError | undefined;
  let bytes = 0;
  for (let j = i; j < i + count; j++) {
    error ??= result?.errors[j];
    bytes += result?.bytes[j] ?? 0;
  }
  return {
    ok: error === undefined,
    bytes: error === undefined ? bytes : 0,
    checksum: count === 1 ? result?.checksums?.[i] : undefined,
    error,
  };
}
