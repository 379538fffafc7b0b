/**
 * Predictive prefetch in the Warehouse (option `predictivePrefetch`): the simulator's staging
 * (lib/apps/sim/prefetch.ts) on a timer. Every interval the top tier's policy forecasts the
 * blocks it let go of whose conversations return soonest; each one still held lower down moves
 * one tier up (file to host, host to the top tier) through Placement.copyTo, the path prefetch()
 * takes (verified against the block's checksum, queued in the PrefetchQueue), within a byte
 * budget, and only while it is worth more than what it displaces ("never at the cost of blocks
 * more likely to be read"). The copy is planned as staged (AccessInfo.staged), so the policy puts
 * the key back into its old group instead of learning a request that never happened.
 *
 * Staged blocks are followed per tier (each tier's policy is wrapped to see departures; reads.ts
 * reports reads) so stats() can say what staging bought: staged = read + evicted unread +
 * staged again one tier up + still staged.
 */
import type { InFlight } from '../core/inflight.js';
import type { Key } from '../keys/keys.js';
import type { EvictionPolicy } from '../policy/policy.js';
import { onDeparture } from '../policy/departures.js';
import { ABSENT, type BlockIndex } from './block-index.js';
import type { KeyLocks } from './key-locks.js';
import type { Placement } from './placement.js';
import type { PrefetchQueue } from './prefetch.js';
import type {
  PredictivePrefetchOptions,
  PredictivePrefetchStats,
  StagedTierStats,
} from './types.js';

export const DEFAULT_STAGING_INTERVAL_MS = 100;
/** Staging jobs yield to every prefetch() a caller asked for. */
const STAGING_PRIORITY = Number.MIN_SAFE_INTEGER;

/** What the stager works with (the Warehouse's parts). */
export interface StagingEnv {
  readonly index: BlockIndex<Key>;
  readonly placement: Placement;
  readonly prefetcher: PrefetchQueue;
  readonly locks: KeyLocks;
  readonly inflight: InFlight;
  readonly blockBytes: number;
  readonly now: () => number;
}

type Counts = Omit<StagedTierStats, 'name' | 'resident'>;

export class Staging {
  /** Staged blocks not read yet: the tier each was staged into. */
  private readonly pending = new Map<Key, number>();
  private readonly counts: Counts[] = [];
  private ticks = 0;
  private refused = 0;
  private failed = 0;
  private env: StagingEnv | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private busy = false;
  private credit = 0;
  private last = 0;
  private reason: string | undefined = 'not started';
  private readonly intervalMs: number;

  constructor(private readonly options: PredictivePrefetchOptions) {
    this.intervalMs = options.intervalMs ?? DEFAULT_STAGING_INTERVAL_MS;
  }

  /** Tier `tier`'s policy, wrapped so that a staged block leaving the tier is counted. */
  wrap(inner: EvictionPolicy<Key>, tier: number): EvictionPolicy<Key> {
    this.counts[tier] ??= { staged: 0, read: 0, evictedUnread: 0, restaged: 0 };
    const left = (key: Key): void => {
      if (this.pending.get(key) !== tier) return;
      this.pending.delete(key);
      this.counts[tier]!.evictedUnread++;
    };
    return onDeparture(inner, left);
  }

  /** Starts the timer, when the top tier's policy forecasts; otherwise says why not. */
  start(env: StagingEnv): void {
    this.env = env;
    const top = env.index.tiers[0]!.policy;
    if (!top.forecast || !top.worth || !top.stage) {
      this.reason = `policy ${top.name} does not forecast returns (only return-time does)`;
      return;
    }
    if (env.index.tiers.length < 2) {
      this.reason = 'a single tier: there is nothing below to stage from';
      return;
    }
    this.reason = undefined;
    this.last = env.now();
    // Unref'd: it never keeps the process alive; close() stops it before anything closes.
    this.timer = setInterval(() => this.tick(), this.intervalMs);
    this.timer.unref();
  }

  /** No tick after this; a staging job in flight ends at its next block (close waits for it). */
  stop(): void {
    this.stopped = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** A get read `key` from tier `tier` (called for every block read). */
  read(key: Key, tier: number): void {
    if (this.pending.size === 0 || this.pending.get(key) !== tier) return;
    this.pending.delete(key);
    this.counts[tier]!.read++;
  }

  report(names: readonly string[]): PredictivePrefetchStats {
    const resident = names.map(() => 0);
    for (const t of this.pending.values()) resident[t]!++;
    const out: PredictivePrefetchStats = {
      active: this.reason === undefined,
      ticks: this.ticks,
      refused: this.refused,
      failed: this.failed,
      tiers: names.map((name, t) => ({
        name,
        ...(this.counts[t] ?? { staged: 0, read: 0, evictedUnread: 0, restaged: 0 }),
        resident: resident[t]!,
      })),
    };
    if (this.reason !== undefined) out.reason = this.reason;
    return out;
  }

  private tick(): void {
    const env = this.env;
    if (this.stopped || !env) return;
    this.ticks++;
    const now = env.now();
    const bps = this.options.bytesPerSecond;
    const cap = Math.max(bps, env.blockBytes);
    this.credit = Math.min(cap, this.credit + (bps * Math.max(0, now - this.last)) / 1000);
    this.last = now;
    // One staging job at a time: credit keeps accruing (up to the cap) while one runs.
    if (this.busy) return;
    const max = Math.floor(this.credit / env.blockBytes);
    if (max < 1) return;
    const keys = env.index.tiers[0]!.policy.forecast!(now, max);
    if (keys.length === 0) return;
    this.busy = true;
    const job = env.prefetcher.enqueue({ bytes: env.blockBytes, priority: STAGING_PRIORITY }, () =>
      this.stage(env, keys, now),
    );
    // Dropped when close() cancels it before it starts; nothing else rejects.
    void env.inflight
      .track(job)
      .catch(() => undefined)
      .finally(() => (this.busy = false));
  }

  /**
   * Stages the forecast keys one by one, each gated on the state the previous one left (what
   * it displaced is gone): the same order of decisions as the simulator's.
   */
  private async stage(env: StagingEnv, keys: readonly Key[], now: number): Promise<void> {
    const { index, placement, locks } = env;
    const top = index.tiers[0]!.policy;
    for (const key of keys) {
      if (this.stopped || this.credit < env.blockBytes) return;
      const e = index.get(key);
      const from = index.topTier(key);
      if (!e || from === ABSENT || from <= 0 || locks.has(key)) continue;
      const worth = top.worth!(key, now);
      if (worth < 0) continue;
      const to = from - 1;
      if (!(worth > this.displaced(index, to, now))) {
        this.refused++;
        continue;
      }
      index.pin(key);
      try {
        const batch = await placement.copyTo(
          [{ key, from: placement.place(from, e.slots[from]!), tier: from }],
          to,
          undefined,
          true,
        );
        // A copy that failed (its source damaged, dropped by copyTo, or an I/O error) is counted.
        if (batch.failed.size > 0) this.failed++;
        if (batch.committed.length === 0) continue;
      } finally {
        index.unpin(key);
      }
      this.credit -= env.blockBytes;
      const before = this.pending.get(key);
      if (before !== undefined) this.counts[before]!.restaged++;
      this.pending.set(key, to);
      this.counts[to]!.staged++;
    }
  }

  /**
   * What a block staged into `tier` would displace is worth (0: a free slot): the block its
   * policy would evict now, valued by the top tier's model or, for a block that model has
   * forgotten, by the tier's own. The victim itself rather than victimWorth(): the block that
   * goes is what the gate must weigh, also when the lowest-valued group has no evictable block
   * (victim() then takes another).
   */
  private displaced(index: BlockIndex<Key>, tier: number, now: number): number {
    const t = index.tiers[tier]!;
    if (t.used < t.capacity) return 0;
    const v = t.policy.victim();
    if (v === undefined) return Infinity;
    const top = index.tiers[0]!.policy;
    return Math.max(0, top.worth!(v, now), t.policy.worth?.(v, now) ?? 0);
  }
}
