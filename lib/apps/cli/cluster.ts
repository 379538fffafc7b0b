/** `kvtier cluster status`: the nodes of a cluster, their capacity, fill and lease age. */
import type { Command } from 'commander';

import {
  CLUSTER_BENCH_DEFAULTS,
  formatClusterBench,
  runClusterBench,
} from '../bench/cluster-bench.js';
import { type ClusterStatus, connectCluster } from '../../index.js';
import { clusterChart } from '../bench/charts.js';
import { finishBench, PLOT_OPTION, startBench } from './bench-output.js';

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}

export function formatStatus(s: ClusterStatus): string {
  const out = [`cluster index ${s.redis} (${s.mode}): ${s.nodes.length} live node(s)`];
  if (s.nodes.length === 0) return out[0]!;
  const rows = [
    ['id', 'address', 'capacity', 'used', 'fill', 'blocks', 'load/s', 'lease age', 'state'],
  ];
  for (const n of s.nodes) {
    rows.push([
      n.id,
      n.address,
      bytes(n.capacityBytes),
      bytes(n.usedBytes),
      n.capacityBytes > 0 ? `${((100 * n.usedBytes) / n.capacityBytes).toFixed(1)}%` : '-',
      String(n.blocks),
      String(n.load),
      `${n.leaseAgeMs} ms`,
      n.compatible ? n.state : `ignored (index format ${n.format || '?'})`,
    ]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  for (const r of rows)
    out.push(
      r
        .map((cell, c) => cell.padEnd(widths[c]!))
        .join('  ')
        .trimEnd(),
    );
  return out.join('\n');
}

export function registerCluster(program: Command): void {
  const cluster = program.command('cluster').description('the global block index in Redis');
  cluster
    .command('status')
    .description('list the live nodes of a cluster: capacity, fill and lease age')
    .requiredOption('--redis <url>', 'redis:// or rediss:// URL of the index')
    .option('--json', 'print the status as JSON')
    .action(async (opts: { redis: string; json?: boolean }) => {
      const view = await connectCluster(opts.redis, { connectTimeoutMs: 3000 });
      try {
        const status = await view.status();
        process.stdout.write(
          opts.json ? `${JSON.stringify(status, null, 2)}\n` : `${formatStatus(status)}\n`,
        );
      } finally {
        await view.close();
      }
    });
  const d = CLUSTER_BENCH_DEFAULTS;
  cluster
    .command('bench')
    .description(
      'chain lookups and publishing against the Redis at --redis, next to a one-GET-per-key client (use a scratch server)',
    )
    .requiredOption('--redis <url>', 'redis:// or rediss:// URL of a scratch Redis')
    .option('--nodes <n>', 'nodes holding prefixes of the chains', String(d.nodes))
    .option('--chain-keys <n>', 'keys per chain looked up', String(d.chainKeys))
    .option('--chains <n>', 'distinct chains', String(d.chains))
    .option('--seconds <s>', 'seconds per lookup measurement', String(d.seconds))
    .option('--publish-keys <n>', 'keys published', String(d.publishKeys))
    .option('--in-flight <n>', 'lookups in flight in the concurrent rows', String(d.inFlight))
    .option(...PLOT_OPTION)
    .option('--json', 'print the report as JSON on stdout')
    .action(
      async (opts: {
        redis: string;
        nodes: string;
        chainKeys: string;
        chains: string;
        seconds: string;
        publishKeys: string;
        inFlight: string;
        json?: boolean;
        plot?: string;
      }) => {
        const progress = startBench(opts);
        const ac = new AbortController();
        const stop = (): void => ac.abort();
        process.once('SIGINT', stop);
        try {
          const report = await runClusterBench({
            redis: opts.redis,
            nodes: Number(opts.nodes),
            chainKeys: Number(opts.chainKeys),
            chains: Number(opts.chains),
            seconds: Number(opts.seconds),
            publishKeys: Number(opts.publishKeys),
            inFlight: Number(opts.inFlight),
            signal: ac.signal,
            progress: (line) => progress.show(line),
          });
          await finishBench(opts, progress, report, {
            json: (r) => `${JSON.stringify(r, null, 2)}\n`,
            table: (r) => `${formatClusterBench(r)}\n`,
            chart: clusterChart,
          });
        } finally {
          process.off('SIGINT', stop);
        }
      },
    );
}
