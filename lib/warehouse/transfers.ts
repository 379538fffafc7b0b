/**
 * One round of block transfers between places (host memory, GPU memory, engine blocks of a paged
 * GPU pool, or files), split into the engines' batches and submitted together: host copies run on
 * the memory engine's threads, file I/O of host memory on the file engine, copies touching GPU
 * memory on the GPU copy engine. Each transfer reports success and, when asked, the CRC-32C of the
 * bytes it moved, computed on the host side of the transfer (before a copy up to the GPU, after a
 * copy down from it), since the DMA engines do not checksum.
 *
 * Moves between a file and GPU memory go through pinned host staging in two steps, so they are
 * checksummed like every other move and files never face a paged pool.
 */
import { TransferBatch, type BatchResult, type IoEngine } from '../core/engine.js';
import { KvtierError } from '../core/errors.js';
import { DeviceRegion } from '../core/gpu/device-region.js';
import { Region } from '../core/region.js';
import { codedOf, runCoded, type CodedMove, type MoveOutcome, type Round } from './coded-moves.js';
import type { SlotPlace } from './tier.js';

export type TransferOutcome = MoveOutcome;

const MEMORY = 0;
const FILE = 1;
const GPU = 2;
type BatchId = typeof MEMORY | typeof FILE | typeof GPU;

interface Ref {
  batch: BatchId;
  index: number;
  /** Descriptors the transfer spans (an engine block's pieces), from `index` on; default 1. */
  count?: number;
  /** Where the checksum comes from when the moving engine cannot compute it. */
  sum?: { batch: typeof MEMORY; index: number } | { after: SlotPlace & { kind: 'memory' } };
  /** A file <-> GPU move: its two steps through host staging, built when the round runs. */
  staged?: { from: SlotPlace; to: SlotPlace; length: number; first?: Ref; second?: Ref };
  /** A move into or out of an encoding tier (coded-moves.ts), run beside the others. */
  coded?: CodedMove;
}

function onGpu(place: SlotPlace): boolean {
  return (
    place.kind === 'layout' || (place.kind === 'memory' && place.target instanceof DeviceRegion)
  );
}

type Settled = BatchResult | undefined;

/** Where moves are added: a round's batches (each made on first use). */
interface Batches {
  readonly memory: TransferBatch;
  readonly file: TransferBatch;
  readonly gpu: TransferBatch;
}

export class TransferRound {
  // Made on first use: most rounds use one of the three (a put to a file tier, the file batch),
  // and a TransferBatch is a typed array, two maps and a set (a profile of a 256 KiB Warehouse
  // put found a dozen made per call, nine of them never used).
  private memoryBatch: TransferBatch | undefined;
  private fileBatch: TransferBatch | undefined;
  private gpuBatch: TransferBatch | undefined;
  private readonly refs: Ref[] = [];

  get memory(): TransferBatch {
    return (this.memoryBatch ??= new TransferBatch());
  }

  get file(): TransferBatch {
    return (this.fileBatch ??= new TransferBatch());
  }

  get gpu(): TransferBatch {
    return (this.gpuBatch ??= new TransferBatch());
  }

  get length(): number {
    return this.refs.length;
  }

  /** Adds a transfer of `length` bytes; returns its index in the outcomes. */
  move(from: SlotPlace, to: SlotPlace, length: number, checksum = false): number {
    if (codedOf(from) || codedOf(to)) {
      this.refs.push({ batch: FILE, index: -1, coded: { from, to, length, checksum } });
      return this.refs.length - 1;
    }
    if ((from.kind === 'file' && onGpu(to)) || (onGpu(from) && to.kind === 'file')) {
      this.refs.push({ batch: FILE, index: -1, staged: { from, to, length } });
      return this.refs.length - 1;
    }
    this.refs.push(this.add(from, to, length, checksum, this));
    return this.refs.length - 1;
  }

  /** Adds a checksum of host memory; returns its index in the outcomes. */
  checksum(place: SlotPlace & { kind: 'memory' }, length: number): number {
    this.refs.push({ batch: MEMORY, index: this.memory.length });
    this.memory.checksum(place.target, place.offset, length);
    return this.refs.length - 1;
  }

  /** One move into the given batches, which never both touch a file and GPU b.memory. */
  private add(from: SlotPlace, to: SlotPlace, length: number, checksum: boolean, b: Batches): Ref {
    if (from.kind === 'layout' || to.kind === 'layout') {
      const ref: Ref = { batch: GPU, index: b.gpu.length };
      if (from.kind === 'layout' && to.kind === 'memory') {
        const runs = from.plan.expand([from.block], to.offset);
        ref.count = runs.length / 3;
        b.gpu.copyRuns(to.target, from.pool, runs, 'a-to-b');
        if (checksum && !onGpu(to)) {
          ref.sum = { after: { kind: 'memory', target: to.target, offset: to.offset } };
        }
      } else if (to.kind === 'layout' && from.kind === 'memory') {
        const runs = to.plan.expand([to.block], from.offset);
        ref.count = runs.length / 3;
        b.gpu.copyRuns(to.pool, from.target, runs, 'b-to-a');
        if (checksum && !onGpu(from)) {
          ref.sum = { batch: MEMORY, index: b.memory.length };
          b.memory.checksum(from.target, from.offset, to.plan.blockBytes);
        }
      } else {
        throw new KvtierError('KVTIER_BAD_ARGUMENT', 'engine blocks move to and from memory only');
      }
      return ref;
    }
    const opts = { checksum };
    if (from.kind === 'memory' && to.kind === 'memory') {
      if (!onGpu(from) && !onGpu(to)) {
        const ref: Ref = { batch: MEMORY, index: b.memory.length };
        b.memory.copy(to.target, to.offset, from.target, from.offset, length, opts);
        return ref;
      }
      const ref: Ref = { batch: GPU, index: b.gpu.length };
      b.gpu.copy(to.target, to.offset, from.target, from.offset, length);
      if (checksum && !onGpu(from)) {
        // The source is host memory nobody changes during the round: checksum it alongside.
        ref.sum = { batch: MEMORY, index: b.memory.length };
        b.memory.checksum(from.target, from.offset, length);
      } else if (checksum && !onGpu(to)) {
        ref.sum = { after: { kind: 'memory', target: to.target, offset: to.offset } };
      }
      return ref;
    }
    if (from.kind === 'file' && to.kind === 'memory') {
      const ref: Ref = { batch: FILE, index: b.file.length };
      b.file.read(from.file, from.offset, to.target, to.offset, length, opts);
      return ref;
    }
    if (from.kind === 'memory' && to.kind === 'file') {
      const ref: Ref = { batch: FILE, index: b.file.length };
      b.file.write(to.file, to.offset, from.target, from.offset, length, opts);
      return ref;
    }
    throw new Error('file-to-file transfers need a staging buffer; the Warehouse never plans one');
  }

  async run(
    memoryEngine: IoEngine,
    fileEngine: IoEngine,
    /** The GPU copy engine, for rounds with GPU places. */
    gpu?: IoEngine,
  ): Promise<TransferOutcome[]> {
    const coded = this.refs.filter((r) => r.coded);
    if (coded.length === 0) return this.runPlain(memoryEngine, fileEngine, gpu);
    // Both parts run to the end before a refusal of either rejects the round (see settle()).
    const [plain, encoded] = await Promise.allSettled([
      this.runPlain(memoryEngine, fileEngine, gpu),
      runCoded(
        coded.map((r) => r.coded!),
        (): Round => {
          const round = new TransferRound();
          return {
            get length() {
              return round.length;
            },
            move: (from, to, length, checksum) => round.move(from, to, length, checksum),
            checksum: (place, length) => round.checksum(place, length),
            run: () => round.run(memoryEngine, fileEngine, gpu),
          };
        },
        gpu,
      ),
    ]);
    if (plain.status === 'rejected') throw plain.reason;
    if (encoded.status === 'rejected') throw encoded.reason;
    let n = 0;
    return plain.value.map((o, i) => (this.refs[i]!.coded ? encoded.value[n++]! : o));
  }

  private async runPlain(
    memoryEngine: IoEngine,
    fileEngine: IoEngine,
    gpu: IoEngine | undefined,
  ): Promise<TransferOutcome[]> {
    const staged = this.refs.filter((r) => r.staged);
    if (((this.gpuBatch?.length ?? 0) > 0 || staged.length > 0) && !gpu) {
      throw new Error('a round with GPU places needs the GPU copy engine');
    }
    if (staged.length === 0 && !this.refs.some((r) => r.sum !== undefined && 'after' in r.sum)) {
      return this.runDirect(memoryEngine, fileEngine, gpu);
    }
    const stagingBytes = staged.reduce((n, r) => n + r.staged!.length, 0);
    const staging = stagingBytes > 0 ? Region.allocate(stagingBytes, { pin: 'auto' }) : undefined;
    try {
      // Step 1: everything direct, plus the first half of each staged move (file or GPU to host).
      let at = 0;
      for (const r of staged) {
        const s = r.staged!;
        const mid: SlotPlace = { kind: 'memory', target: staging!, offset: at };
        at += s.length;
        const sumRead = onGpu(s.to); // file to GPU: the read into staging is checksummed
        s.first = this.add(s.from, mid, s.length, sumRead, this);
        s.from = mid; // the second step starts where the first ends
      }
      const first = await settle([
        [memoryEngine, this.memoryBatch],
        [fileEngine, this.fileBatch],
        [gpu, this.gpuBatch],
      ]);
      // Step 2: the second halves (host to GPU or file), and checksums of copies that came down.
      const memory = new TransferBatch();
      const file = new TransferBatch();
      const gpuBatch = new TransferBatch();
      for (const r of staged) {
        const s = r.staged!;
        if (!outcome(first, s.first!).ok) continue;
        s.second = this.add(s.from, s.to, s.length, s.to.kind === 'file', {
          memory,
          file,
          gpu: gpuBatch,
        });
      }
      const after = new Map<Ref, number>();
      for (const ref of this.refs) {
        if (!ref.sum || !('after' in ref.sum)) continue;
        const moved = outcome(first, ref);
        if (!moved.ok) continue;
        after.set(ref, memory.length);
        memory.checksum(ref.sum.after.target, ref.sum.after.offset, moved.bytes);
      }
      const second = await settle([
        [memoryEngine, memory],
        [fileEngine, file],
        [gpu, gpuBatch],
      ]);
      return this.refs.map((ref) => {
        if (ref.staged) return this.stagedOutcome(ref, first, second);
        const o = outcome(first, ref);
        if (!ref.sum || !o.ok) return o;
        const s =
          'after' in ref.sum
            ? outcome(second, { batch: MEMORY, index: after.get(ref) ?? -1 })
            : outcome(first, { batch: MEMORY, index: ref.sum.index });
        return s.ok ? { ...o, checksum: s.checksum } : { ...o, ok: false, error: s.error };
      });
    } finally {
      await staging?.close();
    }
  }

  /**
   * A round without a second step (no staged moves, no checksums of copies that came down): the
   * common case of put and get. One submission per engine used, and no empty batches.
   */
  private async runDirect(
    memoryEngine: IoEngine,
    fileEngine: IoEngine,
    gpu: IoEngine | undefined,
  ): Promise<TransferOutcome[]> {
    const results = await settle([
      [memoryEngine, this.memoryBatch],
      [fileEngine, this.fileBatch],
      [gpu, this.gpuBatch],
    ]);
    return this.refs.map((ref) => {
      const o = outcome(results, ref);
      if (!ref.sum || !o.ok) return o;
      // Only sums taken beside the move are left (the source checksummed in the memory batch).
      const s = outcome(results, { batch: MEMORY, index: (ref.sum as { index: number }).index });
      return s.ok ? { ...o, checksum: s.checksum } : { ...o, ok: false, error: s.error };
    });
  }

  /** A staged move succeeds when both steps did; its checksum is the host side's. */
  private stagedOutcome(ref: Ref, first: Settled[], second: Settled[]): TransferOutcome {
    const s = ref.staged!;
    const a = outcome(first, s.first!);
    if (!a.ok || !s.second) return { ...a, ok: false, bytes: 0 };
    const b = outcome(second, s.second);
    if (!b.ok) return b;
    // File to GPU: the read into staging was checksummed. GPU to file: the write from it was.
    return {
      ok: true,
      bytes: s.length,
      checksum: s.to.kind === 'file' ? b.checksum : a.checksum,
      error: undefined,
    };
  }
}

/**
 * Submits the non-empty batches together and waits for all of them: a batch refused whole (bad
 * input, a closed target, a GPU stream error) rejects the round only once no other batch of it is
 * still moving bytes, so the caller may give back the slots it reserved.
 */
async function settle(
  jobs: [IoEngine | undefined, TransferBatch | undefined][],
): Promise<Settled[]> {
  let used = 0;
  let only = -1;
  jobs.forEach(([engine, batch], i) => {
    if (engine && batch && batch.length > 0) {
      used++;
      only = i;
    }
  });
  const results: Settled[] = jobs.map(() => undefined);
  if (used === 0) return results;
  if (used === 1) {
    // Nothing else moving bytes that a refusal would have to wait for.
    const [engine, batch] = jobs[only]!;
    results[only] = await engine!.submit(batch!);
    return results;
  }
  const settled = await Promise.allSettled(
    jobs.map(([engine, batch]) =>
      batch && batch.length > 0 && engine ? engine.submit(batch) : Promise.resolve(undefined),
    ),
  );
  const refused = settled.find((s) => s.status === 'rejected');
  if (refused) throw refused.reason;
  return settled.map((s) => (s.status === 'fulfilled' ? s.value : undefined));
}

function outcome(results: Settled[], ref: Pick<Ref, 'batch' | 'index' | 'count'>): TransferOutcome {
  const result = results[ref.batch];
  const count = ref.count ?? 1;
  let error: KvtierError | undefined;
  let bytes = 0;
  for (let j = ref.index; j < ref.index + count; j++) {
    error ??= result?.errors[j];
    bytes += result?.bytes[j] ?? 0;
  }
  if (ref.index < 0) error ??= new KvtierError('KVTIER_IO', 'transfer was not submitted');
  return {
    ok: error === undefined,
    bytes: error === undefined ? bytes : 0,
    checksum: count === 1 ? result?.checksums?.[ref.index] : undefined,
    error,
  };
}
