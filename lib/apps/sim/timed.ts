/**
 * `kvtier sim --timed`: the replay in the units operators pay in. Each request's prefix hits are
 * priced: blocks found in the top tier (the GPU) cost nothing, blocks found lower down are loaded
 * at that tier's bandwidth plus one latency per request and tier, and the tokens not found are
 * prefilled at the model's prefill rate. Time to first token (TTFT) = load + prefill, loads and
 * prefill taken one after the other (no overlap, no queueing, no decode): a per-request bound, not
 * a serving simulation.
 *
 * Three cases from one trace: with the warehouse (every tier), without it (the top tier alone,
 * as the engine's own prefix cache, same capacity and policy), and no cache at all.
 */
import { KvtierError } from '../../index.js';
import type { PrefetchResult } from './prefetch.js';
import {
  simulate,
  type SimOptions,
  type SimResult,
  type SimTier,
  type TraceStats,
} from './replay.js';
import type { Trace } from './trace.js';

/** Bandwidth (GB/s, 1e9 bytes) and latency (ms, once per request that reads the tier). */
export interface TierRate {
  gbps: number;
  latencyMs: number;
}

/**
 * Defaults from kvtier's own measurements on one H100 (bench/results/gpu-h100-2026-11-22.json,
 * `restore`): 16 GiB of Llama-3-8B KV restored from pinned host memory in 0.319 s (53.8 GB/s) and
 * from the file tier in 9.19 s (1.87 GB/s, that VM's disk, cuFile compat mode). Latencies are not
 * measured there: 0.01 ms (a host copy launch) and 0.1 ms (one NVMe read) are assumptions.
 */
export const defaultRates: Record<string, TierRate> = {
  host: { gbps: 53.8, latencyMs: 0.01 },
  file: { gbps: 1.87, latencyMs: 0.1 },
};

/**
 * Prefill tokens per second per model. llama3-8b is measured (131,072 tokens in 10.93 s on one
 * H100: one decoder layer in PyTorch × 32, bench/results/gpu-h100-2026-11-22.json); the others
 * are scaled from it by parameter count (not measured).
 */
export const defaultPrefillRates: Record<string, number> = {
  'llama3-8b': 12_000,
  'mistral-7b': 13_300,
  'qwen2.5-7b': 12_600,
  'llama3-70b': 1_370,
};

export interface TimedOptions {
  tiers: SimTier[];
  /** Per tier below the top one, by position (index 0 is ignored: the top tier loads nothing). */
  rates: TierRate[];
  policy: string;
  /** Tokens per block. */
  blockTokens: number;
  /** KV bytes per token. */
  bytesPerToken: number;
  prefillTokensPerSecond: number;
  /**
   * Per tier (by position): a codec at rest. A load then reads `ratio` of the bytes at the tier's
   * bandwidth and decodes the full bytes at `decodeGBps`, one after the other.
   */
  codecs?: ({ ratio: number; decodeGBps: number } | undefined)[];
  stats?: TraceStats;
  sessions?: boolean;
  hints?: SimOptions['hints'];
  /**
   * Predictive prefetch, one tier up (prefetch.ts): each lower tier stages at this share (0..1]
   * of its bandwidth. The warehouse case is then replayed with and without it.
   */
  prefetch?: { share: number };
  onProgress?: (requests: number) => void;
}

/** With prefetch: what it staged, what came of it, and the warehouse case without it. */
export interface TimedPrefetch extends PrefetchResult {
  share: number;
  /**
   * Prefix hits (blocks) served by tiers below the top one, with prefetch, less those staged
   * into the tier that served them (counted in stagedHits).
   */
  lowerHits: number;
  /**
   * stagedHits / (stagedHits + lowerHits): the share of reads that would have come from a lower
   * tier (without being staged) that found their block already staged up.
   */
  shareStaged: number;
  /** Top-tier prefix hits (blocks) not counting staged ones, with and without prefetch. */
  topHits: { with: number; without: number };
  /** The warehouse case without prefetch. */
  without: { ttft: Percentiles; hitRate: number; lowerHits: number };
}

export interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
  mean: number;
}

export interface TimedResult {
  policy: string;
  requests: number;
  /** From the first request to the last, in hours. */
  trafficHours: number;
  prefillTokensPerSecond: number;
  /** TTFT in milliseconds. */
  ttft: { warehouse: Percentiles; gpuOnly: Percentiles; noCache: Percentiles };
  /** Seconds of GPU prefill avoided per hour of traffic. */
  prefillSecondsAvoidedPerHour: { warehouse: number; gpuOnly: number };
  /** Seconds spent loading blocks from lower tiers per hour of traffic (warehouse case). */
  loadSecondsPerHour: number;
  /** Bytes read from each tier as stored (encoded where a codec applies), warehouse case. */
  loadedBytes: number[];
  hitRate: { warehouse: number; gpuOnly: number };
  prefetch?: TimedPrefetch;
}

/** Nearest-rank percentiles of `xs` (sorted in place). */
export function percentiles(xs: Float64Array): Percentiles {
  xs.sort();
  const n = xs.length;
  const at = (q: number): number => (n === 0 ? 0 : xs[Math.min(n - 1, Math.ceil(q * n) - 1)]!);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += xs[i]!;
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), mean: n === 0 ? 0 : sum / n };
}

export async function simulateTimed(trace: Trace, o: TimedOptions): Promise<TimedResult> {
  if (!(o.prefillTokensPerSecond > 0)) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'the prefill rate must be positive');
  }
  for (let t = 1; t < o.tiers.length; t++) {
    const r = o.rates[t];
    if (!r || !(r.gbps > 0) || !(r.latencyMs >= 0)) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `tier ${o.tiers[t]!.name}: needs a positive bandwidth and a latency (--tier-rates)`,
      );
    }
  }
  const share = o.prefetch?.share;
  if (share !== undefined && !(share > 0 && share <= 1)) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `prefetch share ${share}: expected (0, 1]`);
  }
  for (const c of o.codecs ?? []) {
    if (c && !(c.ratio > 0 && c.ratio <= 1 && c.decodeGBps > 0)) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        'a codec needs a ratio in (0, 1] and a decode rate > 0',
      );
    }
  }
  const rate = o.prefillTokensPerSecond;
  let first = Infinity;
  let last = -Infinity;
  const run = async (
    tiers: SimTier[],
    prefetch = false,
  ): Promise<{
    ttft: Float64Array;
    noCache: Float64Array;
    saved: number;
    load: number;
    loaded: number[];
    sim: SimResult;
  }> => {
    const ttft: number[] = [];
    const loaded = tiers.map(() => 0);
    const noCache: number[] = [];
    let saved = 0;
    let load = 0;
    const base: SimOptions = {
      tiers,
      policy: o.policy,
      blockTokens: o.blockTokens,
      ...(o.stats ? { stats: o.stats } : {}),
      ...(o.sessions ? { sessions: true } : {}),
      ...(o.hints ? { hints: o.hints } : {}),
      ...(o.onProgress ? { onProgress: o.onProgress } : {}),
      ...(prefetch && share !== undefined ? { prefetch: { blocksPerMs: budget(share) } } : {}),
      onRequest: (r, hit) => {
        if (r.time < first) first = r.time;
        if (r.time > last) last = r.time;
        const input = r.inputTokens > 0 ? r.inputTokens : r.length * o.blockTokens;
        let found = 0;
        let loadMs = 0;
        for (let t = 0; t < tiers.length; t++) {
          const tok = hit[t]!;
          found += tok;
          if (t > 0 && tok > 0) {
            const rt = o.rates[t]!;
            const codec = o.codecs?.[t];
            const bytes = tok * o.bytesPerToken;
            const stored = codec ? bytes * codec.ratio : bytes;
            loaded[t]! += stored;
            loadMs += rt.latencyMs + stored / (rt.gbps * 1e6);
            if (codec) loadMs += bytes / (codec.decodeGBps * 1e6);
          }
        }
        const prefillMs = (Math.max(0, input - found) / rate) * 1000;
        ttft.push(loadMs + prefillMs);
        noCache.push((input / rate) * 1000);
        saved += found;
        load += loadMs;
      },
    };
    const sim = await simulate(trace, base);
    return {
      sim,
      ttft: Float64Array.from(ttft),
      noCache: Float64Array.from(noCache),
      saved,
      load,
      loaded,
    };
  };
  /** Blocks per ms each tier moves at `share` of its bandwidth (stored bytes, codec or not). */
  const budget = (sh: number): number[] =>
    o.tiers.map((_, t) => {
      if (t === 0) return 0;
      const blockBytes = o.blockTokens * o.bytesPerToken * (o.codecs?.[t]?.ratio ?? 1);
      return (sh * o.rates[t]!.gbps * 1e6) / blockBytes;
    });
  const all = await run(o.tiers, share !== undefined);
  const plain = share !== undefined && o.tiers.length > 1 ? await run(o.tiers) : undefined;
  const gpu = o.tiers.length > 1 ? await run([o.tiers[0]!]) : all;
  const hours = last > first ? (last - first) / 3.6e6 : 0;
  const perHour = (x: number): number => (hours > 0 ? x / hours : 0);
  const input = all.noCache.reduce((a, b) => a + b, 0);
  const lower = (s: SimResult): number => s.tiers.slice(1).reduce((a, t) => a + t.hits.prefix, 0);
  const pf = all.sim.prefetch;
  const unstaged = pf ? lower(all.sim) - (pf.stagedHits - pf.stagedHitsByTier[0]!) : 0;
  const prefetch: TimedPrefetch | undefined =
    pf && plain
      ? {
          ...pf,
          share: share!,
          lowerHits: unstaged,
          shareStaged:
            pf.stagedHits + unstaged > 0 ? pf.stagedHits / (pf.stagedHits + unstaged) : 0,
          topHits: {
            with: all.sim.tiers[0]!.hits.prefix - pf.stagedHitsByTier[0]!,
            without: plain.sim.tiers[0]!.hits.prefix,
          },
          without: {
            ttft: percentiles(plain.ttft),
            hitRate: input > 0 ? plain.saved / rate / (input / 1000) : 0,
            lowerHits: lower(plain.sim),
          },
        }
      : undefined;
  return {
    policy: o.policy,
    requests: all.ttft.length,
    trafficHours: hours,
    prefillTokensPerSecond: rate,
    ttft: {
      warehouse: percentiles(all.ttft),
      gpuOnly: percentiles(gpu.ttft),
      noCache: percentiles(all.noCache),
    },
    prefillSecondsAvoidedPerHour: {
      warehouse: perHour(all.saved / rate),
      gpuOnly: perHour(gpu.saved / rate),
    },
    loadSecondsPerHour: perHour(all.load / 1000),
    loadedBytes: all.loaded,
    hitRate: {
      warehouse: input > 0 ? all.saved / rate / (input / 1000) : 0,
      gpuOnly: input > 0 ? gpu.saved / rate / (input / 1000) : 0,
    },
    ...(prefetch ? { prefetch } : {}),
  };
}

/** Parses `host=53.8:0.01,file=1.87:0.1` (GB/s : ms per tier name) over the defaults. */
export function parseTierRates(text: string | undefined): Record<string, TierRate> {
  const rates: Record<string, TierRate> = { ...defaultRates };
  if (text === undefined) return rates;
  for (const part of text.split(',')) {
    const m = /^\s*([A-Za-z0-9_-]+)=([0-9.eE+]+)(?::([0-9.eE+]+))?\s*$/.exec(part);
    const gbps = m ? Number(m[2]) : NaN;
    const latencyMs = m?.[3] !== undefined ? Number(m[3]) : (rates[m?.[1] ?? '']?.latencyMs ?? 0);
    if (!m || !(gbps > 0) || !(latencyMs >= 0)) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `--tier-rates ${part}: expected name=GB/s[:latency ms], e.g. host=53.8:0.01`,
      );
    }
    rates[m[1]!] = { gbps, latencyMs };
  }
  return rates;
}

const ms = (x: number): string => (x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : x.toFixed(0));

export function formatTimed(r: TimedResult): string {
  const row = (name: string, p: Percentiles): string =>
    `  ${name.padEnd(22)} p50 ${ms(p.p50).padStart(7)} ms   p90 ${ms(p.p90).padStart(7)} ms   p99 ${ms(p.p99).padStart(7)} ms   mean ${ms(p.mean).padStart(7)} ms`;
  return [
    `timed replay: ${r.requests.toLocaleString('en-US')} requests over ${r.trafficHours.toFixed(2)} h of traffic; prefill ${r.prefillTokensPerSecond.toLocaleString('en-US')} tokens/s; policy ${r.policy}`,
    'time to first token (load + prefill, no queueing):',
    row('with the warehouse', r.ttft.warehouse),
    row('GPU tier alone', r.ttft.gpuOnly),
    row('no cache', r.ttft.noCache),
    `input tokens found: ${(r.hitRate.warehouse * 100).toFixed(2)}% with the warehouse, ${(r.hitRate.gpuOnly * 100).toFixed(2)}% GPU tier alone`,
    `GPU-seconds of prefill avoided per hour of traffic: ${r.prefillSecondsAvoidedPerHour.warehouse.toFixed(0)} with the warehouse, ${r.prefillSecondsAvoidedPerHour.gpuOnly.toFixed(0)} GPU tier alone; loading from lower tiers: ${r.loadSecondsPerHour.toFixed(1)} s per hour`,
    ...(r.prefetch ? formatPrefetch(r.prefetch, row) : []),
  ].join('\n');
}

function formatPrefetch(p: TimedPrefetch, row: (name: string, p: Percentiles) => string): string[] {
  const n = (x: number): string => x.toLocaleString('en-US');
  const pct = (x: number): string => `${(x * 100).toFixed(2)}%`;
  const top = p.topHits.without > 0 ? p.topHits.with / p.topHits.without - 1 : 0;
  return [
    `prefetch (each lower tier stages at ${pct(p.share)} of its bandwidth; with it, above):`,
    row('warehouse, no prefetch', p.without.ttft),
    `  staged ${n(p.staged)} blocks one tier up (${p.stagedFrom.slice(1).map(n).join(' / ')} from the lower tiers): read ${n(p.read)} (${n(p.stagedHits)} as prefix hits: ${p.stagedHitsByTier.map(n).join(' / ')} by tier), evicted unread ${n(p.wasted)}, still staged ${n(p.resident)}, staged again one more tier up ${n(p.restaged)}; refused as worth less than the victim: ${n(p.refused)}`,
    `  lower-tier prefix hits ${n(p.lowerHits)} (without prefetch ${n(p.without.lowerHits)}); share already staged up when asked: ${pct(p.shareStaged)}`,
    `  input tokens found ${pct(p.without.hitRate)} without prefetch; top tier's own prefix hits ${n(p.topHits.with)} against ${n(p.topHits.without)} without (${(top * 100).toFixed(2)}%)`,
  ];
}
