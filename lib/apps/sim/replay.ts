/**
 * Replays a trace through the Warehouse's own placement code: a BlockIndex with one policy per
 * tier, committing every plan at once (tiers that account capacity and move no bytes).
 *
 * Replay rules (those of the reference table in the traces' SOURCES.md): each request first looks
 * up every one of its blocks (a "prefix" hit counts until the first miss, an "any" hit counts
 * every block found), then inserts its blocks in order into the top tier. A block evicted from a
 * tier with no copy further down is demoted to the next tier (write-back), or dropped from the last.
 */
import { type AccessInfo, BlockIndex, KvtierError } from '../../index.js';
import {
  ABSENT,
  DENSE_KEY_LIMIT,
  DenseKeyIds,
  isOffline,
  MapKeyIds,
  policyByName,
} from '../../internal.js';
import { type PrefetchOptions, type PrefetchResult, SimPrefetcher } from './prefetch.js';
import type { Trace, TraceRequest } from './trace.js';

export interface TraceStats {
  requests: number;
  accesses: number;
  distinct: number;
  /** Hit rates with infinite capacity. */
  ceiling: { prefix: number; any: number };
  /** The largest key (-1 for an empty trace). */
  maxKey: number;
  /** Access index of each access's next access to the same key (0x7fffffff: never). */
  next?: Int32Array;
}

const NEVER = 0x7fffffff;
/** Keys below this are counted in a flat array. */
const DENSE_KEYS = 1 << 28;

/** One pass over a trace: sizes, the infinite-capacity ceiling and, on request, next uses. */
export async function scanTrace(
  trace: Trace,
  options: { next?: boolean; onProgress?: (requests: number) => void } = {},
): Promise<TraceStats> {
  let requests = 0;
  let accesses = 0;
  let distinct = 0;
  let maxKey = -1;
  let prefixHits = 0;
  let anyHits = 0;
  let next: Int32Array | undefined = options.next ? new Int32Array(1 << 20).fill(NEVER) : undefined;
  await trace.open?.();
  // Small non-negative integer keys use a flat array (grown as needed); others a Map.
  const space = trace.keySpace;
  let last = new Int32Array(space !== undefined && space <= DENSE_KEYS ? space : 1 << 16).fill(-1);
  const lastMap = new Map<number, number>();
  for await (const r of trace.requests()) {
    requests++;
    const keys = r.keys;
    const n = r.length;
    if (next && accesses + n > next.length) {
      let size = next.length * 2;
      while (size < accesses + n) size *= 2;
      const grown = new Int32Array(size).fill(NEVER);
      grown.set(next);
      next = grown;
    }
    let prefix = true;
    for (let i = 0; i < n; i++) {
      const key = keys[i]!;
      const idx = accesses + i;
      let prev: number;
      if (key < last.length) {
        prev = last[key]!;
        last[key] = idx;
      } else if (key < DENSE_KEYS && (key | 0) === key) {
        let size = last.length * 2;
        while (size <= key) size *= 2;
        const grown = new Int32Array(size).fill(-1);
        grown.set(last);
        last = grown;
        prev = -1;
        last[key] = idx;
      } else {
        prev = lastMap.get(key) ?? -1;
        lastMap.set(key, idx);
      }
      if (prev < 0) {
        distinct++;
        if (key > maxKey) maxKey = key;
        prefix = false;
      } else {
        anyHits++;
        if (prefix) prefixHits++;
        if (next) next[prev] = idx;
      }
    }
    accesses += n;
    if (options.onProgress && (requests & 255) === 0) options.onProgress(requests);
  }
  return {
    requests,
    accesses,
    distinct,
    maxKey,
    ceiling: {
      prefix: accesses === 0 ? 0 : prefixHits / accesses,
      any: accesses === 0 ? 0 : anyHits / accesses,
    },
    ...(next ? { next: next.subarray(0, accesses) } : {}),
  };
}

export interface SimTier {
  name: string;
  /** Capacity in blocks (> 0). */
  capacity: number;
}

export interface SimOptions {
  tiers: SimTier[];
  /** Policy name (see policyNames()). */
  policy: string;
  /** Tokens per block, for prefill tokens saved (default: the trace's, else 1). */
  blockTokens?: number;
  /** Bytes per block, for bytes promoted and demoted (default 0: not reported). */
  blockBytes?: number;
  /** A scan already made (with `next` when the policy is offline). */
  stats?: TraceStats;
  /** Pass the trace's session ids to the policy (AccessInfo.session); default false. */
  sessions?: boolean;
  /** Engine hints the trace records, passed to the policy (AccessInfo.hint); default none. */
  hints?: 'none' | 'soon' | 'closed' | 'both';
  /**
   * Called after each request's lookups with its prefix-hit tokens per tier (index = tier; the
   * array is reused: copy what you keep). For the timed replay (timed.ts).
   */
  onRequest?: (r: TraceRequest, hitTokens: Float64Array) => void;
  /** Called every few hundred requests with the requests replayed so far. */
  onProgress?: (requests: number) => void;
  /** Predictive prefetch, one tier up (prefetch.ts); needs a policy that forecasts. */
  prefetch?: PrefetchOptions;
}

export interface TierResult {
  name: string;
  capacity: number;
  /** Share of all block accesses served from this tier (prefix: before the request's first miss). */
  hitRate: { prefix: number; any: number };
  hits: { prefix: number; any: number };
  inserts: number;
  evictions: number;
  promotions: number;
  demotions: number;
  bytesPromoted: number;
  bytesDemoted: number;
}

export interface SimResult {
  policy: string;
  requests: number;
  accesses: number;
  distinct: number;
  ceiling: { prefix: number; any: number };
  hitRate: { prefix: number; any: number };
  tiers: TierResult[];
  blockTokens: number;
  blockBytes: number;
  prefillTokensSaved: number;
  /** Lines or files skipped as malformed (--on-error skip). */
  skipped: number;
  /** Seconds spent replaying (not counting the scan). */
  replaySeconds: number;
  accessesPerSecond: number;
  /** With `prefetch`: what was staged and what became of it. */
  prefetch?: PrefetchResult;
}

export async function simulate(trace: Trace, options: SimOptions): Promise<SimResult> {
  const offline = isOffline(options.policy);
  if (options.tiers.length === 0)
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'no tiers to simulate');
  if (options.tiers.length > 30) throw new KvtierError('KVTIER_BAD_ARGUMENT', 'at most 30 tiers');
  for (const t of options.tiers) {
    if (!Number.isSafeInteger(t.capacity) || t.capacity <= 0) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `tier ${t.name}: capacity must be a positive number of blocks (got ${t.capacity})`,
      );
    }
  }
  let stats = options.stats;
  if (!stats || (offline && !stats.next)) stats = await scanTrace(trace, { next: offline });
  const pf = options.prefetch
    ? new SimPrefetcher({ burst: options.tiers[0]!.capacity, ...options.prefetch })
    : undefined;
  const index = new BlockIndex<number>(
    options.tiers.map((t, i) => {
      const policy = policyByName<number>(options.policy, t.capacity, i);
      return { name: t.name, capacity: t.capacity, policy: pf ? pf.wrap(policy, i) : policy };
    }),
    // Integer keys in a compact range are their own row ids: no hashing per access.
    { ids: stats.maxKey < DENSE_KEY_LIMIT ? new DenseKeyIds(stats.maxKey + 1) : new MapKeyIds() },
  );
  const next = stats.next;
  const blockTokens = options.blockTokens ?? trace.blockTokens ?? 1;
  const blockBytes = options.blockBytes ?? 0;
  const nt = options.tiers.length;
  const prefixHits = new Float64Array(nt);
  const anyHits = new Float64Array(nt);
  let tokensSaved = 0;
  let requests = 0;
  let accesses = 0;
  const info: AccessInfo = {
    now: 0,
    priority: 0,
    depth: 0,
    chainLength: 0,
    next: Infinity,
    request: 0,
  };
  const sessions = options.sessions === true;
  const hints = options.hints ?? 'none';
  const soon = hints === 'soon' || hints === 'both';
  const closed = hints === 'closed' || hints === 'both';
  const onRequest = options.onRequest;
  const reqTokens = new Float64Array(nt);
  const meta = { length: 0, checksum: 0 };
  const started = performance.now();
  for await (const r of trace.requests()) {
    const keys = r.keys;
    const n = r.length;
    info.now = r.time;
    info.priority = r.priority;
    info.chainLength = n;
    info.request = requests;
    if (sessions && r.session >= 0) info.session = r.session;
    if (soon || closed) {
      const h = r.hint;
      info.hint = (h === 'soon' && soon) || (h === 'closed' && closed) ? h : undefined;
    }
    if (pf) pf.before(r.time, index);
    let prefix = true;
    for (let i = 0; i < n; i++) {
      info.depth = i;
      if (next) info.next = next[accesses + i]!;
      const t = index.access(keys[i]!, info);
      if (pf && t !== ABSENT) pf.read(keys[i]!, t, prefix);
      if (t === ABSENT) {
        prefix = false;
      } else {
        anyHits[t]!++;
        if (prefix) {
          prefixHits[t]!++;
          const saved =
            r.inputTokens > 0
              ? Math.max(0, Math.min(blockTokens, r.inputTokens - i * blockTokens))
              : blockTokens;
          tokensSaved += saved;
          if (onRequest) reqTokens[t]! += saved;
        }
      }
    }
    if (onRequest) {
      onRequest(r, reqTokens);
      reqTokens.fill(0);
    }
    for (let i = 0; i < n; i++) {
      info.depth = i;
      if (next) info.next = next[accesses + i]!;
      index.place(keys[i]!, 0, info, meta);
    }
    accesses += n;
    requests++;
    if (options.onProgress && (requests & 255) === 0) options.onProgress(requests);
  }
  const replaySeconds = (performance.now() - started) / 1000;
  const rate = (x: number): number => (accesses === 0 ? 0 : x / accesses);
  let p = 0;
  let a = 0;
  for (let t = 0; t < nt; t++) {
    p += prefixHits[t]!;
    a += anyHits[t]!;
  }
  return {
    policy: options.policy,
    requests,
    accesses,
    distinct: stats.distinct,
    ceiling: stats.ceiling,
    hitRate: { prefix: rate(p), any: rate(a) },
    tiers: index.tiers.map((t, i) => ({
      name: t.name,
      capacity: t.capacity,
      hitRate: { prefix: rate(prefixHits[i]!), any: rate(anyHits[i]!) },
      hits: { prefix: prefixHits[i]!, any: anyHits[i]! },
      inserts: t.stats.inserts,
      evictions: t.stats.evictions,
      promotions: t.stats.promotions,
      demotions: t.stats.demotions,
      bytesPromoted: t.stats.promotions * blockBytes,
      bytesDemoted: t.stats.demotions * blockBytes,
    })),
    blockTokens,
    blockBytes,
    prefillTokensSaved: tokensSaved,
    skipped: trace.skipped,
    replaySeconds,
    accessesPerSecond: replaySeconds > 0 ? accesses / replaySeconds : 0,
    ...(pf ? { prefetch: pf.finish() } : {}),
  };
}
