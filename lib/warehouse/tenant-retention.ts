/**
 * Retention: each block of a tenant whose class has a time-to-live is expired once it has gone
 * unused (no put, no hit) for that long. A tenant's blocks all share one ttl, so ordering them by
 * last use orders them by expiry: one insertion-ordered Map per tenant (a use moves the key to the
 * end) is the whole time-ordered structure. A sweep takes keys from the front while they are due
 * and stops at the first that is not, so it costs the blocks it expires, never a scan; it runs
 * lazily before a tenant's operations and on one unref'd timer set for the earliest due time.
 */
import { MAX_TIMER_MS } from './leases.js';
import type { Key } from '../keys/keys.js';

export class RetentionList {
  /** Key -> time of its last use, oldest use first. */
  private readonly uses = new Map<Key, number>();

  constructor(readonly ttlMs: number) {}

  get size(): number {
    return this.uses.size;
  }

  use(key: Key, now: number): void {
    this.uses.delete(key);
    this.uses.set(key, now);
  }

  forget(key: Key): void {
    this.uses.delete(key);
  }

  /** Whether the key is held and past its time (a lookup must not report it). */
  expired(key: Key, now: number): boolean {
    const at = this.uses.get(key);
    return at !== undefined && at + this.ttlMs <= now;
  }

  /** The keys due by `now`, oldest first. */
  due(now: number): Key[] {
    const out: Key[] = [];
    for (const [key, at] of this.uses) {
      if (at + this.ttlMs > now) break;
      out.push(key);
    }
    return out;
  }

  /** When the next key falls due (Infinity: none held). */
  nextDue(): number {
    for (const at of this.uses.values()) return at + this.ttlMs;
    return Infinity;
  }
}

/**
 * One timer for every tenant's list: armed for the earliest due time by `now`'s clock, re-armed
 * after each sweep. It never keeps the process alive.
 */
export class SweepTimer {
  private timer: NodeJS.Timeout | undefined;
  private at = Infinity;

  constructor(
    private readonly now: () => number,
    private readonly fire: () => void,
  ) {}

  /** Makes sure a sweep runs by `due` (by the clock): keeps an earlier timer, replaces a later one. */
  arm(due: number): void {
    if (due === Infinity || due >= this.at) return;
    this.stop();
    this.at = due;
    const ms = Math.min(Math.max(due - this.now(), 1), MAX_TIMER_MS);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.at = Infinity;
      this.fire();
    }, ms);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.at = Infinity;
  }
}
