/**
 * `kvtier sim`: replays a serving trace through the Warehouse's own BlockIndex and policies (tiers
 * that account capacity and move no bytes) and reports hit rates per tier.
 */
import { formatBytes } from '../sizes.js';
import { basename } from 'node:path';

import type { Command } from 'commander';
import Table from 'cli-table3';

import { KvtierError } from '../../index.js';
import { DEFAULT_POLICY, isOffline, policyByName, policyNames } from '../../internal.js';
import {
  models,
  parseCapacity,
  parseTiers,
  resolveCapacity,
  type CapacitySpec,
} from '../sim/capacity.js';
import { openTrace } from '../sim/open.js';
import { renderPlot, type PlotPoint } from '../sim/plot.js';
import { checkPlotFile } from '../plot.js';
import { ProgressBar, showsProgress } from '../progress.js';
import { scanTrace, simulate, type SimResult, type TraceStats } from '../sim/replay.js';
import {
  defaultPrefillRates,
  formatTimed,
  parseTierRates,
  simulateTimed,
  type TierRate,
  type TimedResult,
} from '../sim/timed.js';
import {
  formatTenantsSim,
  parseSimTenants,
  simulateTenants,
  type TenantsSimResult,
} from '../sim/tenants.js';
import type { Trace, TraceFormat } from '../sim/trace.js';
import {
  DEFAULT_DECODE_GBPS,
  encodedTiers,
  formatCodecSim,
  parseCodecList,
  parseDecodeRates,
  readDecodeRates,
  simulateCodecs,
  type CodecSimResult,
  type SimCodec,
} from '../sim/codec.js';

interface SimOpts {
  trace: string;
  format: string;
  merge: string;
  capacity?: string;
  tiers?: string;
  policy: string;
  model?: string;
  blockBytes?: string;
  blockTokens?: string;
  json?: boolean;
  plot?: string;
  timed?: boolean;
  prefillRate?: string;
  tierRates?: string;
  sessions?: boolean;
  hints?: string;
  tenants?: string;
  onError: string;
  codec?: string;
  codecTiers?: string;
  decodeGbps?: string;
  decodeRates?: string;
  prefetch?: boolean | string;
}

const pct = (x: number): string => `${(x * 100).toFixed(2)}%`;

export function formatSim(r: SimResult): string {
  const out: string[] = [];
  out.push(
    `${r.requests.toLocaleString('en-US')} requests, ${r.accesses.toLocaleString('en-US')} block accesses, ${r.distinct.toLocaleString('en-US')} distinct blocks (${r.blockTokens} tokens each)`,
  );
  out.push(
    `policy ${r.policy}; ceiling (infinite capacity): prefix ${pct(r.ceiling.prefix)}, any ${pct(r.ceiling.any)}`,
  );
  const t = new Table({
    head: [
      'tier',
      'capacity (blocks)',
      'prefix hits',
      'any hits',
      'promoted',
      'demoted',
      'evicted',
    ],
    style: { head: [] },
  });
  for (const tier of r.tiers) {
    t.push([
      tier.name,
      tier.capacity.toLocaleString('en-US'),
      pct(tier.hitRate.prefix),
      pct(tier.hitRate.any),
      r.blockBytes ? formatBytes(tier.bytesPromoted) : tier.promotions.toLocaleString('en-US'),
      r.blockBytes ? formatBytes(tier.bytesDemoted) : tier.demotions.toLocaleString('en-US'),
      tier.evictions.toLocaleString('en-US'),
    ]);
  }
  t.push(['total', '', pct(r.hitRate.prefix), pct(r.hitRate.any), '', '', '']);
  out.push(t.toString());
  out.push(
    `prefill tokens saved: ${r.prefillTokensSaved.toLocaleString('en-US')}; replay ${r.replaySeconds.toFixed(1)} s (${(r.accessesPerSecond / 1e6).toFixed(2)} M accesses/s)`,
  );
  if (r.skipped > 0) out.push(`skipped ${r.skipped} malformed line(s) or file(s)`);
  return out.join('\n');
}

function choice(name: string, value: string, allowed: readonly string[]): void {
  if (!allowed.includes(value)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `--${name} ${value}: expected one of ${allowed.join(', ')}`,
    );
  }
}

function positiveInt(name: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `--${name} ${text}: expected a positive integer`);
  }
  return n;
}

export async function runSim(
  opts: SimOpts,
): Promise<SimResult | TimedResult | CodecSimResult | TenantsSimResult> {
  choice('format', opts.format, ['auto', 'mooncake', 'kvcache-tester', 'kvtier']);
  choice('merge', opts.merge, ['concurrent', 'sequential']);
  choice('on-error', opts.onError, ['skip', 'stop']);
  choice('hints', opts.hints ?? 'none', ['none', 'soon', 'closed', 'both']);
  const hints = (opts.hints ?? 'none') as 'none' | 'soon' | 'closed' | 'both';
  policyByName(opts.policy, 1); // unknown policy: fail before reading anything
  const prefetch = prefetchShare(opts);
  if (opts.tenants !== undefined) checkTenantsSim(opts);
  if (opts.capacity !== undefined && opts.tiers !== undefined) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'give --capacity or --tiers, not both');
  }
  if (opts.model !== undefined && opts.blockBytes !== undefined) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'give --model or --block-bytes, not both');
  }
  if (opts.model !== undefined && models[opts.model] === undefined) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `unknown model "${opts.model}" (known: ${Object.keys(models).join(', ')}; or give --block-bytes)`,
    );
  }
  const codecs = opts.codec === undefined ? undefined : parseCodecList(opts.codec);
  if (codecs === undefined) {
    for (const [flag, v] of [
      ['codec-tiers', opts.codecTiers],
      ['decode-gbps', opts.decodeGbps],
      ['decode-rates', opts.decodeRates],
    ] as const) {
      if (v !== undefined) throw new KvtierError('KVTIER_BAD_ARGUMENT', `--${flag} needs --codec`);
    }
  } else if (!opts.timed && (opts.decodeGbps !== undefined || opts.decodeRates !== undefined)) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'decode rates price loads: they need --timed');
  } else if (opts.blockBytes !== undefined || opts.plot !== undefined) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      '--codec needs the KV layout of a --model (not --block-bytes) and draws no --plot',
    );
  }
  const specs: { name: string; spec: CapacitySpec }[] = opts.tiers
    ? parseTiers(opts.tiers)
    : [{ name: 'cache', spec: parseCapacity(opts.capacity ?? '5%') }];
  const explicitBlockBytes = positiveInt('block-bytes', opts.blockBytes);
  const explicitBlockTokens = positiveInt('block-tokens', opts.blockTokens);
  const tty = showsProgress({ json: opts.json });
  if (opts.plot !== undefined) checkPlotFile(opts.plot);
  const trace: Trace = await openTrace(opts.trace, opts.format as TraceFormat | 'auto', {
    onError: opts.onError as 'skip' | 'stop',
    merge: opts.merge as 'concurrent' | 'sequential',
    onSkip: (m) => {
      if (!opts.json) process.stderr.write(`${tty ? '\r\x1b[K' : ''}kvtier: skipped ${m}\n`);
    },
  });
  const blockTokens = explicitBlockTokens ?? trace.blockTokens ?? 1;
  // A codec needs a layout: the model's, llama3-8b unless named.
  const model = opts.model ?? (codecs ? 'llama3-8b' : undefined);
  const blockBytes = explicitBlockBytes ?? (model ? models[model]! * blockTokens : undefined);
  const scanProgress = new ProgressBar({ json: opts.json, label: 'reading trace' });
  let stats: TraceStats = await scanTrace(trace, {
    next: isOffline(opts.policy),
    onProgress: () => scanProgress.update(0, 1),
  });
  scanProgress.clear();
  if (stats.accesses === 0) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `${opts.trace}: the trace has no block accesses`);
  }
  const tiers = specs.map((s) => ({
    name: s.name,
    capacity: resolveCapacity(s.spec, stats.distinct, blockBytes, s.name),
  }));
  if (opts.tenants !== undefined) {
    return simulateTenants(trace, {
      tiers,
      policy: opts.policy,
      blockTokens,
      stats,
      tenants: parseSimTenants(opts.tenants),
    });
  }
  if (codecs) {
    const encoded = encodedTiers(tiers, opts.codecTiers);
    const progress = new ProgressBar({ json: opts.json, label: `codecs (${opts.policy})` });
    const passes = codecs.length * (opts.timed && tiers.length > 1 ? 2 : 1);
    let done = 0;
    let lastN = 0;
    return simulateCodecs({
      trace,
      stats,
      tiers,
      specs: specs.map((s) => s.spec),
      codecs,
      encoded,
      model: model!,
      blockTokens,
      policy: opts.policy,
      ...(opts.sessions ? { sessions: true } : {}),
      hints,
      ...(opts.timed ? { timed: timedCodecRates(opts, tiers, model!) } : {}),
      onProgress: (_c, n) => {
        if (n < lastN) done++;
        lastN = n;
        progress.update(done * stats.requests + n, passes * stats.requests);
      },
    }).finally(() => progress.clear());
  }
  if (opts.timed) {
    return runTimed(opts, trace, stats, tiers, blockTokens, blockBytes, hints, prefetch);
  }
  const progress = new ProgressBar({ json: opts.json, label: `replaying (${opts.policy})` });
  const result = await simulate(trace, {
    tiers,
    policy: opts.policy,
    blockTokens,
    blockBytes: blockBytes ?? 0,
    stats,
    ...(opts.sessions ? { sessions: true } : {}),
    hints,
    onProgress: (n) => progress.update(n, stats.requests),
  });
  progress.clear();
  if (opts.plot) {
    const points: PlotPoint[] = [];
    const shares = [1, 2, 5, 10, 25, 50];
    const plotted = [...new Set(['lru', DEFAULT_POLICY, opts.policy, 'belady'])];
    if (!stats.next) stats = await scanTrace(trace, { next: true });
    const plotProgress = new ProgressBar({ json: opts.json, label: 'plotting' });
    const total = shares.length * plotted.length;
    let done = 0;
    for (const policy of plotted) {
      for (const share of shares) {
        const capacity = Math.max(1, Math.round((stats.distinct * share) / 100));
        const r = await simulate(trace, {
          tiers: [{ name: 'cache', capacity }],
          policy,
          blockTokens,
          stats,
        });
        points.push({ policy, capacity: share, hitRate: r.hitRate.prefix });
        plotProgress.update(++done, total);
      }
    }
    plotProgress.clear();
    await renderPlot(
      points,
      stats.ceiling.prefix,
      `kvtier sim: ${basename(opts.trace)} (prefix hit rate)`,
      opts.plot,
    );
  }
  return result;
}

/** --prefetch[=share]: the share of each lower tier's bandwidth staging may use (default 0.5). */
function prefetchShare(opts: SimOpts): number | undefined {
  if (opts.prefetch === undefined || opts.prefetch === false) return undefined;
  const share = opts.prefetch === true ? 0.5 : Number(opts.prefetch);
  if (!(share > 0 && share <= 1)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `--prefetch ${String(opts.prefetch)}: expected a share of bandwidth in (0, 1], e.g. 0.5`,
    );
  }
  const clash = [
    !opts.timed && 'no --timed (staging is priced in time)',
    opts.codec !== undefined && '--codec',
    opts.tenants !== undefined && '--tenants',
  ].find(Boolean);
  if (clash) throw new KvtierError('KVTIER_BAD_ARGUMENT', `--prefetch does not go with ${clash}`);
  if (!policyByName(opts.policy, 1).forecast) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `--prefetch needs a policy that forecasts returns (return-time), not ${opts.policy}`,
    );
  }
  return share;
}

/** --tenants: the spec checked before the trace is read, and what it cannot go with. */
function checkTenantsSim(opts: SimOpts): void {
  parseSimTenants(opts.tenants!);
  const clash = [
    opts.timed && '--timed',
    opts.codec !== undefined && '--codec',
    opts.plot !== undefined && '--plot',
    isOffline(opts.policy) && `--policy ${opts.policy} (it reads the whole trace ahead)`,
  ].find(Boolean);
  if (clash) throw new KvtierError('KVTIER_BAD_ARGUMENT', `--tenants does not go with ${clash}`);
}

function prefillRate(opts: SimOpts, model: string | undefined): number {
  const prefill =
    opts.prefillRate !== undefined
      ? Number(opts.prefillRate)
      : model !== undefined
        ? defaultPrefillRates[model]
        : undefined;
  if (prefill === undefined || !(prefill > 0)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `--prefill-rate ${opts.prefillRate ?? '(none)'}: expected tokens per second > 0 (no default for this model)`,
    );
  }
  return prefill;
}

function tierRates(opts: SimOpts, tiers: { name: string }[]): TierRate[] {
  const named = parseTierRates(opts.tierRates);
  return tiers.map(
    (t, i) =>
      named[t.name] ?? (i === 0 ? { gbps: 1, latencyMs: 0 } : { gbps: NaN, latencyMs: NaN }),
  );
}

/** Timed codec replays: tier and prefill rates as usual, decode GB/s measured or given. */
function timedCodecRates(
  opts: SimOpts,
  tiers: { name: string }[],
  model: string,
): {
  rates: TierRate[];
  prefillTokensPerSecond: number;
  decodeGBps: Partial<Record<SimCodec, number>>;
} {
  const base =
    opts.decodeRates === undefined ? DEFAULT_DECODE_GBPS : readDecodeRates(opts.decodeRates);
  return {
    rates: tierRates(opts, tiers),
    prefillTokensPerSecond: prefillRate(opts, model),
    decodeGBps: parseDecodeRates(opts.decodeGbps, base),
  };
}

async function runTimed(
  opts: SimOpts,
  trace: Trace,
  stats: TraceStats,
  tiers: { name: string; capacity: number }[],
  blockTokens: number,
  blockBytes: number | undefined,
  hints: 'none' | 'soon' | 'closed' | 'both',
  prefetch: number | undefined,
): Promise<TimedResult> {
  // Timed replays price bytes: a model (default llama3-8b) or --block-bytes gives bytes per token.
  const model = opts.model ?? (opts.blockBytes === undefined ? 'llama3-8b' : undefined);
  const bytesPerToken = blockBytes !== undefined ? blockBytes / blockTokens : models[model!]!;
  const prefill = prefillRate(opts, model);
  const rates = tierRates(opts, tiers);
  const progress = new ProgressBar({ json: opts.json, label: `timed (${opts.policy})` });
  let base = 0;
  let lastN = 0;
  return simulateTimed(trace, {
    tiers,
    rates,
    policy: opts.policy,
    blockTokens,
    bytesPerToken,
    prefillTokensPerSecond: prefill,
    stats,
    ...(opts.sessions ? { sessions: true } : {}),
    hints,
    ...(prefetch !== undefined ? { prefetch: { share: prefetch } } : {}),
    onProgress: (n) => {
      if (n < lastN) base += lastN;
      lastN = n;
      progress.update(base + n, stats.requests * (prefetch !== undefined ? 3 : 2));
    },
  }).finally(() => progress.clear());
}

export function registerSim(program: Command): void {
  program
    .command('sim')
    .description(
      "replay a serving trace through kvtier's placement code and report hit rates per tier",
    )
    .requiredOption('--trace <path>', 'trace file, or a folder of kv-cache-tester sessions')
    .option('--format <format>', 'auto | mooncake | kvcache-tester | kvtier', 'auto')
    .option(
      '--merge <how>',
      'kv-cache-tester sessions: concurrent (all from t=0) | sequential',
      'concurrent',
    )
    .option(
      '--capacity <size>',
      'one tier: 5% (of distinct blocks), 20000 (blocks) or 16GiB (default 5%)',
    )
    .option('--tiers <list>', 'a hierarchy, top first: gpu=1%,host=5%,file=25%')
    .option('--policy <name>', `eviction policy: ${policyNames().join(', ')}`, DEFAULT_POLICY)
    .option('--model <name>', `KV bytes per token from a model: ${Object.keys(models).join(', ')}`)
    .option('--block-bytes <n>', 'bytes per block (instead of --model)')
    .option('--block-tokens <n>', "tokens per block (default: the trace's)")
    .option('--on-error <what>', 'malformed lines or files: stop | skip', 'stop')
    .option('--json', 'print only the result as JSON')
    .option(
      '--plot <file>',
      'also draw hit rate against capacity for several policies (.svg or .png)',
    )
    .option('--timed', 'price hits in time: TTFT with and without the warehouse, GPU-s saved')
    .option('--prefill-rate <tokens/s>', 'timed: prefill rate (default per model: llama3-8b 12000)')
    .option(
      '--tier-rates <list>',
      'timed: GB/s[:latency ms] per tier (default host=53.8:0.01,file=1.87:0.1)',
    )
    .option(
      '--prefetch [share]',
      "timed, return-time: stage predicted returns one tier up (file to host, host to GPU) at this share of each lower tier's bandwidth (default 0.5)",
    )
    .option('--sessions', "pass the trace's session ids to the policy (AccessInfo.session)")
    .option(
      '--codec <list>',
      'one replay per codec at the same tier bytes: none, fp8-e4m3, int8, kivi4, kivi2 (layout from --model, default llama3-8b)',
    )
    .option(
      '--codec-tiers <list>',
      'codec: the encoded tiers (default: every tier but gpu and host)',
    )
    .option(
      '--decode-gbps <list>',
      "codec, timed: decode GB/s per codec, e.g. kivi2=0.8 (default: kvtier's own one-core AVX2 figures, docs/codecs.md)",
    )
    .option('--decode-rates <file>', 'codec, timed: a `kvtier bench codec --json` report')
    .option(
      '--hints <which>',
      'engine hints the trace records: none | soon | closed | both',
      'none',
    )
    .option(
      '--tenants <spec>',
      'split sessions into tenants: a:share=0.6:ttl=5m[:traffic=0.5],b:share=0.4:ttl=1h',
    )
    .action(async (opts: SimOpts) => {
      const result = await runSim(opts);
      const text =
        'kind' in result
          ? formatCodecSim(result)
          : 'ttft' in result
            ? formatTimed(result)
            : 'tenants' in result
              ? formatTenantsSim(result)
              : formatSim(result);
      process.stdout.write(opts.json ? `${JSON.stringify(result, null, 2)}\n` : `${text}\n`);
    });
}
