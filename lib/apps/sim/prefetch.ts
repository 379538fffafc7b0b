/**
 * Predictive prefetch in the simulator. Before each request, in the time since the previous one,
 * the top tier's policy forecasts which blocks it let go of will be asked for soonest, and each
 * one still held lower down moves one tier up (file to host, host to the top tier), within a
 * bandwidth budget per source tier, and only while it is worth more than what it displaces
 * ("never at the cost of blocks more likely to be read"): in the top tier, its next victim; in a
 * lower tier, that tier's victim, valued by the top tier's model and by the tier's own (the
 * higher counts: a block the top model forgot is judged by its tier's); a free slot is worth 0.
 *
 * The move is BlockIndex.plan() then commit(), the Warehouse's stager's path (staging.ts), with
 * AccessInfo.staged: the landing tier's policy, whichever tier it is, hears stage() (the key
 * rejoins its old group), not insert(), which would start a request that never happened.
 *
 * One tier up, not straight to the top: the top tier holds a few conversations, and a block
 * staged there from the file tier and evicted unread falls back to the file tier (its copy is
 * still there); staged into host memory it waits where a read costs 1/30 of a file read.
 *
 * The forecast is made at the previous request's time (what the prefetcher knew when it started)
 * and the budget is what the source tier moves, at its share of bandwidth, until the request
 * arrives. Staging reads compete with nothing here: the timed model prices request loads as if
 * the staging share of bandwidth were free (said in docs/policies.md).
 */
import { type AccessInfo, type BlockIndex, type EvictionPolicy, KvtierError } from '../../index.js';
import { onDeparture } from '../../internal.js';

export interface PrefetchOptions {
  /**
   * Blocks per millisecond of trace time each tier can send up for staging, by tier position
   * (index 0, the top tier, is ignored). A tier with 0 (or no entry) is never staged from.
   */
  blocksPerMs: number[];
  /** At most this many blocks staged before one request (default: the top tier's capacity). */
  burst?: number;
}

export interface PrefetchResult {
  /** Blocks staged one tier up (into any tier; by source in stagedFrom). */
  staged: number;
  /** Staged blocks read by a request while still in the tier they were staged into. */
  read: number;
  /** ... of which within the request's prefix (what a prefix hit counts). */
  stagedHits: number;
  /** Those prefix hits by the tier they were staged into (and read from). */
  stagedHitsByTier: number[];
  /** Staged blocks that left the tier they were staged into without being read. */
  wasted: number;
  /** Staged blocks still staged (unread) at the end. */
  resident: number;
  /** Staged blocks staged once more (one more tier up) before any read: counted again. */
  restaged: number;
  /** Staged blocks per source tier (by position). */
  stagedFrom: number[];
  /**
   * Forecast keys not staged because they were worth no more than what they would displace in
   * the tier they would land in (its victim; a free slot is worth 0).
   */
  refused: number;
}

/** Tracks staged blocks and the budget; `wrap` each tier's policy, then call before/read. */
export class SimPrefetcher {
  private readonly rates: number[];
  private readonly credit: number[];
  private readonly burst: number;
  /** Staged blocks not yet read: the tier each was staged into. */
  private readonly pending = new Map<number, number>();
  private policy: EvictionPolicy<number> | undefined;
  /** Each tier's own policy (unwrapped), by position. */
  private readonly inner: EvictionPolicy<number>[] = [];
  private last = NaN;
  /** Staged, as the Warehouse's stager plans its copies: the landing tier's policy stage()s. */
  private readonly info: AccessInfo = {
    now: 0,
    priority: 0,
    depth: 0,
    chainLength: 1,
    staged: true,
  };
  private readonly meta = { length: 0, checksum: 0 };
  readonly result: PrefetchResult;

  constructor(options: PrefetchOptions) {
    for (const r of options.blocksPerMs) {
      if (!(r >= 0) || !Number.isFinite(r)) {
        throw new KvtierError('KVTIER_BAD_ARGUMENT', `prefetch: bad budget ${r} blocks per ms`);
      }
    }
    if (options.burst !== undefined && !(options.burst > 0)) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', `prefetch: burst must be > 0`);
    }
    this.rates = options.blocksPerMs.slice();
    this.credit = this.rates.map(() => 0);
    this.burst = options.burst ?? Infinity;
    this.result = {
      staged: 0,
      read: 0,
      stagedHits: 0,
      wasted: 0,
      resident: 0,
      restaged: 0,
      stagedFrom: this.rates.map(() => 0),
      stagedHitsByTier: this.rates.map(() => 0),
      refused: 0,
    };
  }

  /**
   * Tier `tier`'s policy, wrapped: departures of staged blocks are counted; stage() passes
   * through, so a staged key rejoins its group in whichever tier it lands (BlockIndex.plan).
   */
  wrap(inner: EvictionPolicy<number>, tier: number): EvictionPolicy<number> {
    if (tier === 0 && (!inner.forecast || !inner.worth || !inner.victimWorth || !inner.stage)) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `prefetch needs a policy that predicts returns (return-time), not ${inner.name}`,
      );
    }
    if (tier === 0) this.policy = inner;
    this.inner[tier] = inner;
    return onDeparture(inner, (key) => {
      if (this.pending.get(key) !== tier) return;
      this.pending.delete(key);
      this.result.wasted++;
    });
  }

  /** A request read `key` from tier `tier` (call for every hit). */
  read(key: number, tier: number, prefix: boolean): void {
    if (this.pending.get(key) !== tier) return;
    this.pending.delete(key);
    this.result.read++;
    if (prefix) {
      this.result.stagedHits++;
      this.result.stagedHitsByTier[tier]!++;
    }
  }

  /** Stages what the time since the previous request allows, before a request at `now`. */
  before(now: number, index: BlockIndex<number>): void {
    const p = this.policy!;
    const last = this.last;
    this.last = now;
    if (!(now > last)) return;
    let total = 0;
    for (let t = 1; t < this.rates.length; t++) {
      this.credit[t] = Math.min(this.burst, this.credit[t]! + this.rates[t]! * (now - last));
      total += Math.floor(this.credit[t]!);
    }
    const max = Math.min(total, this.burst);
    if (max < 1) return;
    const keys = p.forecast!(last, max);
    const info = this.info;
    info.now = last;
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i]!;
      const from = index.topTier(key);
      if (from <= 0 || this.credit[from]! < 1) continue;
      const worth = p.worth!(key, last);
      if (worth < 0) continue;
      const to = from - 1;
      if (!(worth > this.displaced(index, to, last))) {
        this.result.refused++;
        continue;
      }
      info.depth = i;
      // plan() + commit(), the Warehouse's path (Placement.copyTo): plan() tells the landing
      // tier's policy of a staged key through stage(), where place() would insert() it.
      const plan = index.plan(key, to, info);
      if (!plan) continue;
      index.commit(plan, info, this.meta);
      this.credit[from]!--;
      this.result.staged++;
      this.result.stagedFrom[from]!++;
      if (this.pending.has(key)) this.result.restaged++;
      this.pending.set(key, to);
    }
  }

  /** What a block staged into `tier` would displace is worth (0: a free slot). */
  private displaced(index: BlockIndex<number>, tier: number, now: number): number {
    const t = index.tiers[tier]!;
    if (t.used < t.capacity) return 0;
    const p = this.policy!;
    if (tier === 0) return p.victimWorth!(now);
    const v = t.policy.victim();
    if (v === undefined) return Infinity;
    // A block the top tier's model has forgotten is judged by its own tier's model, if any.
    const own = this.inner[tier]!.worth?.(v, now) ?? 0;
    return Math.max(0, p.worth!(v, now), own);
  }

  /** The counters, with the staged blocks still unread counted as resident. */
  finish(): PrefetchResult {
    this.result.resident = this.pending.size;
    return this.result;
  }
}
