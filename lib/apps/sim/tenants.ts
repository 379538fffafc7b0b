/**
 * `kvtier sim --tenants SPEC`: a trace split into tenants, each with a share of every tier and a
 * retention class, replayed to report each tenant's hit rate (docs/tenants.md, "Sizing").
 *
 * How it models the warehouse's tenants: requests go to a tenant by a hash of their session (or,
 * in a trace without sessions, request by request), so a conversation stays with one tenant.
 * Each tenant gets its own BlockIndex whose tiers hold its share of each tier's capacity, with
 * one policy per tenant per tier: a tenant at its quota evicts its own blocks and never anyone
 * else's. That is the warehouse's quota-first rule (a quota is a cap, one policy instance per
 * tenant and tier) when every tenant has a quota in every tier; left out are tenants without
 * quotas and tenants over theirs after landings or a restart. Keys of
 * different tenants never meet, as in the warehouse: the same prefix in two tenants is stored
 * twice. A retention class expires a block once the trace's clock passes its last use by the ttl.
 */
import { type AccessInfo, BlockIndex, KvtierError } from '../../index.js';
import { ABSENT, DENSE_KEY_LIMIT, DenseKeyIds, MapKeyIds, policyByName } from '../../internal.js';
import type { TraceStats } from './replay.js';
import type { Trace } from './trace.js';

export interface SimTenantSpec {
  name: string;
  /** Share of every tier's capacity, above 0 and at most 1. */
  share: number;
  /** Retention: ms after a block's last use; undefined: kept until evicted. */
  ttlMs?: number;
  /** Share of the sessions routed to this tenant; unset shares split what is left evenly. */
  traffic?: number;
}

export interface TenantSimResult {
  name: string;
  share: number;
  ttlMs?: number;
  traffic: number;
  requests: number;
  accesses: number;
  hitRate: { prefix: number; any: number };
  tiers: { name: string; capacity: number; prefixHits: number; evictions: number }[];
  /** Blocks inserted (cache writes), evicted for space, expired by retention. */
  written: number;
  evicted: number;
  expired: number;
  prefillTokensSaved: number;
}

export interface TenantsSimResult {
  policy: string;
  blockTokens: number;
  requests: number;
  accesses: number;
  tenants: TenantSimResult[];
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

const bad = (m: string): KvtierError => new KvtierError('KVTIER_BAD_ARGUMENT', `--tenants: ${m}`);

function fraction(text: string, what: string): number {
  // Decimal only: Number() would also read '0x1', '1e0' or ' 1'.
  const x = /^(0|1)?(\.[0-9]+)?$/.test(text) && text !== '' ? Number(text) : NaN;
  if (!(x > 0 && x <= 1)) throw bad(`${what} must be above 0 and at most 1, not '${text}'`);
  return x;
}

/**
 * `name:share=0.6:ttl=5m:traffic=0.5,name2:share=0.4:ttl=1h`: per tenant a share of each tier,
 * an optional ttl (ms, or with s, m, h or d; 'pinned' or absent: none) and an optional share of
 * the traffic (sessions). Shares add up to at most 1; traffic to 1 (unset ones split the rest).
 */
export function parseSimTenants(spec: string): SimTenantSpec[] {
  const out: SimTenantSpec[] = [];
  for (const part of spec.split(',')) {
    const [name, ...fields] = part.trim().split(':');
    if (!name || !/^[A-Za-z0-9._-]{1,64}$/.test(name)) throw bad(`bad tenant name in '${part}'`);
    if (out.some((t) => t.name === name)) throw bad(`tenant '${name}' named twice`);
    const t: Partial<SimTenantSpec> = { name };
    for (const f of fields) {
      const [k, v] = f.split('=');
      if (v === undefined) throw bad(`'${f}' is not field=value`);
      if (k === 'share') t.share = fraction(v, `${name}: share`);
      else if (k === 'traffic') t.traffic = fraction(v, `${name}: traffic`);
      else if (k === 'ttl') {
        if (v === 'pinned' || v === 'none') continue;
        const m = /^(\d+)(ms|s|m|h|d)?$/.exec(v);
        if (!m || Number(m[1]) <= 0) throw bad(`${name}: ttl '${v}' is not a duration like 5m`);
        t.ttlMs = Number(m[1]) * UNITS[m[2] ?? 'ms']!;
      } else throw bad(`${name}: unknown field '${k}' (share, ttl, traffic)`);
    }
    if (t.share === undefined) throw bad(`${name}: needs share=`);
    out.push(t as SimTenantSpec);
  }
  const shares = out.reduce((s, t) => s + t.share, 0);
  if (shares > 1 + 1e-9) throw bad(`the shares add up to ${shares}, more than 1`);
  const given = out.reduce((s, t) => s + (t.traffic ?? 0), 0);
  const unset = out.filter((t) => t.traffic === undefined);
  if (given > 1 + 1e-9 || (unset.length === 0 && Math.abs(given - 1) > 1e-9)) {
    throw bad(`the traffic shares add up to ${given}, not 1`);
  }
  for (const t of unset) t.traffic = (1 - given) / unset.length;
  return out;
}

/** A 32-bit mix of an integer, to [0, 1): sessions numbered 0, 1, 2... spread evenly. */
function hash01(x: number): number {
  let h = Math.imul((x ^ (x / 0x100000000)) | 0, 0x9e3779b1);
  h ^= h >>> 15;
  h = Math.imul(h, 0x85ebca77);
  h ^= h >>> 13;
  return (h >>> 0) / 0x100000000;
}

interface Lane {
  spec: SimTenantSpec;
  index: BlockIndex<number>;
  lastUse: Map<number, number>;
  /** Uses in time order (key, time), for expiry; `head` is the first not yet checked. */
  useKeys: number[];
  useTimes: number[];
  head: number;
  requests: number;
  accesses: number;
  prefix: number;
  any: number;
  prefixByTier: Float64Array;
  expired: number;
  saved: number;
}

/** Expires the lane's blocks whose last use is more than its ttl before `now`. */
function expire(lane: Lane, now: number): void {
  const ttl = lane.spec.ttlMs;
  if (ttl === undefined) return;
  while (lane.head < lane.useKeys.length && lane.useTimes[lane.head]! + ttl < now) {
    const key = lane.useKeys[lane.head]!;
    // Only the key's last use counts: an older entry of a key used since is stale.
    if (lane.lastUse.get(key) === lane.useTimes[lane.head]) {
      lane.lastUse.delete(key);
      if (lane.index.topTier(key) !== ABSENT && lane.index.remove(key)) lane.expired++;
    }
    lane.head++;
  }
  if (lane.head > 1 << 16 && lane.head * 2 > lane.useKeys.length) {
    lane.useKeys = lane.useKeys.slice(lane.head);
    lane.useTimes = lane.useTimes.slice(lane.head);
    lane.head = 0;
  }
}

export async function simulateTenants(
  trace: Trace,
  options: {
    tiers: { name: string; capacity: number }[];
    policy: string;
    blockTokens: number;
    stats: TraceStats;
    tenants: SimTenantSpec[];
    onProgress?: (requests: number) => void;
  },
): Promise<TenantsSimResult> {
  const { tiers, stats } = options;
  const lanes: Lane[] = options.tenants.map((spec) => ({
    spec,
    index: new BlockIndex<number>(
      tiers.map((t, i) => {
        const capacity = Math.max(1, Math.floor(t.capacity * spec.share));
        return {
          name: t.name,
          capacity,
          policy: policyByName<number>(options.policy, capacity, i),
        };
      }),
      { ids: stats.maxKey < DENSE_KEY_LIMIT ? new DenseKeyIds(stats.maxKey + 1) : new MapKeyIds() },
    ),
    lastUse: new Map(),
    useKeys: [],
    useTimes: [],
    head: 0,
    requests: 0,
    accesses: 0,
    prefix: 0,
    any: 0,
    prefixByTier: new Float64Array(tiers.length),
    expired: 0,
    saved: 0,
  }));
  const bounds: number[] = [];
  let acc = 0;
  for (const l of lanes) bounds.push((acc += l.spec.traffic!));
  const info: AccessInfo = { now: 0, priority: 0, depth: 0, chainLength: 0, request: 0 };
  const meta = { length: 0, checksum: 0 };
  const bt = options.blockTokens;
  let requests = 0;
  let accesses = 0;
  for await (const r of trace.requests()) {
    const n = r.length;
    if (n === 0) continue;
    const who = hash01(r.session >= 0 ? r.session : requests);
    const at = bounds.findIndex((b) => who < b);
    const lane = lanes[at < 0 ? lanes.length - 1 : at]!;
    expire(lane, r.time);
    info.now = r.time;
    info.priority = r.priority;
    info.chainLength = n;
    info.request = requests;
    let prefix = true;
    for (let i = 0; i < n; i++) {
      info.depth = i;
      const t = lane.index.access(r.keys[i]!, info);
      if (t === ABSENT) prefix = false;
      else {
        lane.any++;
        if (prefix) {
          lane.prefix++;
          lane.prefixByTier[t]!++;
          lane.saved += r.inputTokens > 0 ? Math.max(0, Math.min(bt, r.inputTokens - i * bt)) : bt;
        }
      }
    }
    for (let i = 0; i < n; i++) {
      const key = r.keys[i]!;
      info.depth = i;
      lane.index.place(key, 0, info, meta);
      if (lane.spec.ttlMs !== undefined) {
        lane.lastUse.set(key, r.time);
        lane.useKeys.push(key);
        lane.useTimes.push(r.time);
      }
    }
    lane.requests++;
    lane.accesses += n;
    accesses += n;
    requests++;
    if (options.onProgress && (requests & 255) === 0) options.onProgress(requests);
  }
  const rate = (x: number, of: number): number => (of === 0 ? 0 : x / of);
  return {
    policy: options.policy,
    blockTokens: bt,
    requests,
    accesses,
    tenants: lanes.map((l) => ({
      name: l.spec.name,
      share: l.spec.share,
      ...(l.spec.ttlMs !== undefined ? { ttlMs: l.spec.ttlMs } : {}),
      traffic: l.spec.traffic!,
      requests: l.requests,
      accesses: l.accesses,
      hitRate: { prefix: rate(l.prefix, l.accesses), any: rate(l.any, l.accesses) },
      tiers: l.index.tiers.map((t, i) => ({
        name: t.name,
        capacity: t.capacity,
        prefixHits: l.prefixByTier[i]!,
        evictions: t.stats.evictions,
      })),
      written: l.index.tiers[0]!.stats.inserts,
      evicted: l.index.tiers[l.index.tiers.length - 1]!.stats.evictions,
      expired: l.expired,
      prefillTokensSaved: l.saved,
    })),
  };
}

const pct = (x: number): string => `${(x * 100).toFixed(2)}%`;

function duration(ms: number | undefined): string {
  if (ms === undefined) return 'none';
  for (const [u, f] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms % f === 0) return `${ms / f}${u}`;
  }
  return `${ms}ms`;
}

export function formatTenantsSim(r: TenantsSimResult): string {
  const head = [
    'tenant',
    'share',
    'ttl',
    'requests',
    'prefix hits',
    'any hits',
    'written',
    'evicted',
    'expired',
    'tokens saved',
  ];
  const rows = r.tenants.map((t) => [
    t.name,
    pct(t.share),
    duration(t.ttlMs),
    String(t.requests),
    pct(t.hitRate.prefix),
    pct(t.hitRate.any),
    String(t.written),
    String(t.evicted),
    String(t.expired),
    String(t.prefillTokensSaved),
  ]);
  const all = [head, ...rows];
  const w = head.map((_, c) => Math.max(...all.map((l) => l[c]!.length)));
  const lines = all.map((l) =>
    l
      .map((x, c) => x.padEnd(w[c]!))
      .join('  ')
      .trimEnd(),
  );
  return [
    `${r.requests} requests, ${r.accesses} block accesses; policy ${r.policy}, one per tenant per tier within its share`,
    ...lines,
  ].join('\n');
}
