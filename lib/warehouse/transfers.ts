/**
 * One round of block transfers between places (memory or file), split into the two engines'
 * batches and submitted together: memory copies run on the memory engine's threads, file reads and
 * writes on the file engine. Each transfer reports success and, when asked, the checksum.
 */
import { TransferBatch, type BatchResult, type IoEngine } from '../engine.js';
import type { KvtierError } from '../errors.js';
import type { SlotPlace } from './tier.js';

export interface TransferOutcome {
  ok: boolean;
  bytes: number;
  checksum: number | undefined;
  error: KvtierError | undefined;
}

type Ref = { batch: 0 | 1; index: number };

export class TransferRound {
  readonly memory = new TransferBatch();
  readonly file = new TransferBatch();
  private readonly refs: Ref[] = [];

  get length(): number {
    return this.refs.length;
  }

  /** Adds a transfer of `length` bytes; returns its index in the outcomes. */
  move(from: SlotPlace, to: SlotPlace, length: number, checksum = false): number {
    const opts = { checksum };
    if (from.kind === 'memory' && to.kind === 'memory') {
      this.refs.push({ batch: 0, index: this.memory.length });
      this.memory.copy(to.target, to.offset, from.target, from.offset, length, opts);
    } else if (from.kind === 'file' && to.kind === 'memory') {
      this.refs.push({ batch: 1, index: this.file.length });
      this.file.read(from.file, from.offset, to.target, to.offset, length, opts);
    } else if (from.kind === 'memory' && to.kind === 'file') {
      this.refs.push({ batch: 1, index: this.file.length });
      this.file.write(to.file, to.offset, from.target, from.offset, length, opts);
    } else {
      throw new Error(
        'file-to-file transfers need a staging buffer; the Warehouse never plans one',
      );
    }
    return this.refs.length - 1;
  }

  /** Adds a checksum of memory; returns its index in the outcomes. */
  checksum(place: SlotPlace & { kind: 'memory' }, length: number): number {
    this.refs.push({ batch: 0, index: this.memory.length });
    this.memory.checksum(place.target, place.offset, length);
    return this.refs.length - 1;
  }

  async run(memoryEngine: IoEngine, fileEngine: IoEngine): Promise<TransferOutcome[]> {
    const [m, f] = await Promise.all([
      this.memory.length > 0 ? memoryEngine.submit(this.memory) : undefined,
      this.file.length > 0 ? fileEngine.submit(this.file) : undefined,
    ]);
    return this.refs.map(({ batch, index }) => outcome(batch === 0 ? m : f, index));
  }
}

function outcome(result: BatchResult | undefined, i: number): TransferOutcome {
  const error = result?.errors[i];
  return {
    ok: error === undefined,
    bytes: result?.bytes[i] ?? 0,
    checksum: result?.checksums?.[i],
    error,
  };
}
