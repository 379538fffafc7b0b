/**
 * Replay speed of `kvtier sim` on the agentic folder (a benchmark, not a test): runs the CLI a few
 * times per policy under /usr/bin/time -v and keeps the best replay rate, with end-to-end time,
 * peak RSS and the machine's load average, in bench/results/sim-speed.json.
 *
 * Node 20 does not run TypeScript; after `node scripts/build-ts.mjs`, run it with
 *   node --input-type=module -e "$(node -e "const ts=require('typescript');process.stdout.write(
 *     ts.transpileModule(require('fs').readFileSync('scripts/sim-speed.ts','utf8'),
 *     {compilerOptions:{module:'ESNext',target:'ES2022'}}).outputText)")"
 * Environment: SIM_TRACE (default ../shared/traces/kv-cache-tester), SIM_RUNS (default 3),
 * SIM_POLICIES (default lru,arc-tree), SIM_CAPACITY (default 5%), SIM_OUT (default
 * bench/results/sim-speed.json).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';

interface Run {
  accessesPerSecond: number;
  replaySeconds: number;
  wallSeconds: number;
  peakRssMiB: number;
  load1Before: number;
  load1After: number;
}

const trace = process.env.SIM_TRACE ?? '../shared/traces/kv-cache-tester';
const runs = Number(process.env.SIM_RUNS ?? 3);
const policies = (process.env.SIM_POLICIES ?? 'lru,arc-tree').split(',');
const capacity = process.env.SIM_CAPACITY ?? '5%';

interface Measured extends Run {
  accesses: number;
  hitRate: number;
}

function onceWithRss(policy: string): Measured {
  // /usr/bin/time -v reports on stderr: route it to a file with -o.
  const out = `/tmp/kvtier-sim-speed-${process.pid}.txt`;
  const load1Before = loadavg()[0]!;
  const started = performance.now();
  const stdout = execFileSync(
    '/usr/bin/time',
    [
      '-v',
      '-o',
      out,
      process.execPath,
      'dist/apps/cli/main.js',
      'sim',
      '--trace',
      trace,
      '--capacity',
      capacity,
      '--policy',
      policy,
      '--json',
    ],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26 },
  );
  const wallSeconds = (performance.now() - started) / 1000;
  const timeReport = execFileSync('cat', [out], { encoding: 'utf8' });
  const rssKiB = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(timeReport)?.[1] ?? NaN);
  const r = JSON.parse(stdout) as {
    accesses: number;
    accessesPerSecond: number;
    replaySeconds: number;
    hitRate: { prefix: number };
  };
  return {
    accesses: r.accesses,
    hitRate: r.hitRate.prefix,
    accessesPerSecond: r.accessesPerSecond,
    replaySeconds: r.replaySeconds,
    wallSeconds,
    peakRssMiB: rssKiB / 1024,
    load1Before,
    load1After: loadavg()[0]!,
  };
}

const results = policies.map((policy) => {
  const all = Array.from({ length: runs }, () => onceWithRss(policy));
  const best = all.reduce((a, b) => (b.accessesPerSecond > a.accessesPerSecond ? b : a));
  return {
    policy,
    capacity,
    accesses: best.accesses,
    prefixHitRate: best.hitRate,
    best: {
      accessesPerSecond: Math.round(best.accessesPerSecond),
      replaySeconds: +best.replaySeconds.toFixed(2),
      endToEndSeconds: +best.wallSeconds.toFixed(2),
      endToEndAccessesPerSecond: Math.round(best.accesses / best.wallSeconds),
      peakRssMiB: +best.peakRssMiB.toFixed(1),
    },
    runs: all.map((r) => ({
      accessesPerSecond: Math.round(r.accessesPerSecond),
      endToEndSeconds: +r.wallSeconds.toFixed(2),
      peakRssMiB: +r.peakRssMiB.toFixed(1),
      load1Before: +r.load1Before.toFixed(2),
      load1After: +r.load1After.toFixed(2),
    })),
  };
});

const report = {
  benchmark: 'kvtier sim replay speed (agentic kv-cache-tester folder)',
  trace,
  date: new Date().toISOString(),
  machine: {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryGiB: +(totalmem() / 2 ** 30).toFixed(1),
    node: process.version,
    note: 'shared 2-core build machine; other engineers run benchmarks: best of the runs is kept, load averages recorded per run',
  },
  results,
};
mkdirSync('bench/results', { recursive: true });
writeFileSync(
  process.env.SIM_OUT ?? 'bench/results/sim-speed.json',
  `${JSON.stringify(report, null, 2)}\n`,
);
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
