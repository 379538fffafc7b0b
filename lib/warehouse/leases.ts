/**
 * Leases: blocks pinned against eviction for a while, so a client that crashes cannot pin them
 * forever. They expire by the warehouse's clock (`now`, injectable for tests and the simulator):
 * operations that could evict or report pins look first (expire()), and a timer looks too, so an
 * idle warehouse lets them go. A timer that fires before the clock says so waits for the rest.
 */
import type { Key } from '../keys/keys.js';
import { ABSENT, type BlockIndex } from './block-index.js';
import { leaseId } from './options.js';
import type { Lease } from './types.js';

/** setTimeout's longest delay; longer ones fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export class Leases {
  private readonly leases = new Map<number, { lease: Lease; timer: NodeJS.Timeout }>();
  private nextId = 1;
  /** No lease expires before this time (by `now`), so most operations skip the scan. */
  private nextExpiry = Infinity;

  constructor(
    private readonly index: BlockIndex<Key>,
    private readonly now: () => number,
  ) {}

  /** Pins the keys that are cached and not being moved out of a tier; the lease lists those. */
  pin(keys: readonly Key[], ttlMs: number): Lease {
    const held = keys.filter((k) => {
      const e = this.index.get(k);
      // A block an operation in flight is moving out of a tier (an eviction victim) cannot be
      // held any more.
      if (!e || e.slots.some((slot, t) => slot !== ABSENT && (e.busy & (1 << t)) !== 0))
        return false;
      return this.index.pin(k);
    });
    const lease: Lease = { id: this.nextId++, keys: held, expiresAt: this.now() + ttlMs };
    this.leases.set(lease.id, { lease, timer: this.timer(lease.id, ttlMs) });
    this.nextExpiry = Math.min(this.nextExpiry, lease.expiresAt);
    return lease;
  }

  /** Ends a lease early. Idempotent; a value that is no lease is a bad argument. */
  unpin(lease: unknown): void {
    const id = leaseId(lease);
    const held = this.leases.get(id);
    if (!held) return;
    clearTimeout(held.timer);
    this.leases.delete(id);
    for (const k of held.lease.keys) this.index.unpin(k);
  }

  /** Ends every lease whose time has come by `now`. */
  expire(): void {
    if (this.leases.size === 0) return;
    const now = this.now();
    if (now < this.nextExpiry) return;
    let next = Infinity;
    for (const { lease } of [...this.leases.values()]) {
      if (lease.expiresAt <= now) this.unpin(lease);
      else next = Math.min(next, lease.expiresAt);
    }
    this.nextExpiry = next;
  }

  /** Stops every timer and forgets the leases (close: the index goes with the warehouse). */
  clear(): void {
    for (const { timer } of this.leases.values()) clearTimeout(timer);
    this.leases.clear();
  }

  private timer(id: number, ms: number): NodeJS.Timeout {
    const timer = setTimeout(() => {
      this.expire();
      const held = this.leases.get(id);
      if (held) {
        const left = held.lease.expiresAt - this.now();
        held.timer = this.timer(id, Math.min(Math.max(left, 1), MAX_TIMER_MS));
      }
    }, ms);
    timer.unref();
    return timer;
  }
}
