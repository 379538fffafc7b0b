/**
 * PrefetchQueue: runs prefetch jobs highest priority first, with a bound on the bytes they move
 * at once. A job waiting in the queue can be cancelled (AbortSignal) or expire (deadline); once
 * started it runs to the end, because bytes in the kernel cannot be recalled.
 */
import { abortError, KvtierError } from '../core/errors.js';

interface Job<T> {
  bytes: number;
  priority: number;
  deadline?: number;
  signal?: AbortSignal;
  seq: number;
  run: () => Promise<T>;
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
  onAbort?: () => void;
}

export class PrefetchQueue {
  private readonly queue: Job<unknown>[] = [];
  private inFlightBytes = 0;
  private running = 0;
  private seq = 0;

  constructor(
    private readonly maxBytes: number,
    private readonly now: () => number,
  ) {}

  get queued(): number {
    return this.queue.length;
  }

  enqueue<T>(
    spec: { bytes: number; priority: number; deadline?: number; signal?: AbortSignal },
    run: () => Promise<T>,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const job: Job<T> = { ...spec, seq: this.seq++, run, resolve, reject };
      if (spec.signal) {
        job.onAbort = () => {
          const at = this.queue.indexOf(job as Job<unknown>);
          if (at >= 0) {
            this.queue.splice(at, 1);
            reject(abortError(spec.signal!));
          }
        };
        spec.signal.addEventListener('abort', job.onAbort, { once: true });
      }
      this.queue.push(job as Job<unknown>);
      // Highest priority first; equal priorities in arrival order.
      this.queue.sort((a, b) => b.priority - a.priority || a.seq - b.seq);
      this.pump();
    });
  }

  /** Rejects every job that has not started (on close). */
  cancelQueued(): void {
    for (const job of this.queue.splice(0)) {
      this.detach(job);
      job.reject(
        new KvtierError('KVTIER_CLOSED', 'the warehouse closed before this prefetch started'),
      );
    }
  }

  private detach(job: Job<unknown>): void {
    if (job.signal && job.onAbort) job.signal.removeEventListener('abort', job.onAbort);
  }

  private pump(): void {
    while (this.queue.length > 0) {
      const job = this.queue[0]!;
      // A job larger than the bound still runs, alone, so nothing waits forever.
      if (this.running > 0 && this.inFlightBytes + job.bytes > this.maxBytes) return;
      this.queue.shift();
      this.detach(job);
      if (job.deadline !== undefined && this.now() > job.deadline) {
        job.reject(
          new KvtierError('KVTIER_ABORTED', 'the prefetch missed its deadline before it started'),
        );
        continue;
      }
      this.running++;
      this.inFlightBytes += job.bytes;
      job
        .run()
        .then(job.resolve, job.reject)
        .finally(() => {
          this.running--;
          this.inFlightBytes -= job.bytes;
          this.pump();
        });
    }
  }
}
