/**
 * Registered pools: an engine's KV memory as kvtier sees it (a mapped host Region or imported GPU
 * memory), with its layout and copy plan. The registry knows every pool of every connection, so
 * the same memory cannot be registered twice, and a pool closes only once the operations in
 * flight on it have ended.
 */
import type { Target } from '../core/engine.js';
import { KvtierError } from '../core/errors.js';
import { InFlight } from '../core/inflight.js';
import type { KvCopyPlan, KvLayout } from '../layout/index.js';

export interface PoolMemory {
  /** Where the copy plan's pool offsets point. */
  target: Target;
  /** Names the memory for the duplicate check (a file's dev:inode, an IPC handle). */
  identities: string[];
  kind: 'memfd' | 'cuda-ipc';
  /** Unmaps or closes the memory (once nothing uses it). */
  close(): Promise<void>;
}

export class Pool {
  readonly name: string;
  readonly layout: KvLayout;
  readonly plan: KvCopyPlan;
  readonly memory: PoolMemory;
  private readonly inFlight = new InFlight();
  private closing: Promise<void> | undefined;

  constructor(name: string, layout: KvLayout, plan: KvCopyPlan, memory: PoolMemory) {
    this.name = name;
    this.layout = layout;
    this.plan = plan;
    this.memory = memory;
  }

  get numBlocks(): number {
    return this.layout.numBlocks;
  }

  /**
   * Whether the pool is already an array of packed kvtier blocks (each block one run, blocks back
   * to back), so blocks can be read and written in place.
   */
  get packedInPlace(): boolean {
    if (this.memory.kind !== 'memfd' || this.plan.segmentCount !== 1) return false;
    if (this.layout.numBlocks === 1) return true;
    const [b0] = this.plan.segments(0);
    const [b1] = this.plan.segments(1);
    return b1!.poolOffset - b0!.poolOffset === this.plan.blockBytes;
  }

  /** Runs `op` with the pool held open; refuses once the pool is released. */
  async use<T>(op: () => Promise<T>): Promise<T> {
    if (this.closing) throw new KvtierError('KVTIER_CLOSED', `pool '${this.name}' was released`);
    this.inFlight.begin();
    try {
      return await op();
    } finally {
      this.inFlight.end();
    }
  }

  /** Waits for the operations in flight, then closes the memory. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.inFlight.drained().then(() => this.memory.close());
    return this.closing;
  }
}

/** Every registered pool's memory identity, across connections. */
export class PoolRegistry {
  private readonly owners = new Map<string, Pool>();
  private count = 0;

  get pools(): number {
    return this.count;
  }

  /** Claims the pool's identities; refuses memory already registered (and claims nothing). */
  add(pool: Pool): void {
    for (const id of pool.memory.identities) {
      const owner = this.owners.get(id);
      if (owner) {
        throw new KvtierError(
          'KVTIER_BAD_ARGUMENT',
          `this memory (${id}) is already registered as pool '${owner.name}'`,
        );
      }
    }
    for (const id of pool.memory.identities) this.owners.set(id, pool);
    this.count++;
  }

  /** Forgets the pool at once (its memory may be registered again) and closes it after. */
  remove(pool: Pool): Promise<void> {
    let had = false;
    for (const id of pool.memory.identities) {
      if (this.owners.get(id) === pool) {
        this.owners.delete(id);
        had = true;
      }
    }
    if (had) this.count--;
    return pool.close();
  }
}
