/**
 * Each bench's table as chart rows for `--plot`: kvtier's figure and its peer's (fio, iperf3, the
 * raw engine, PyTorch...) side by side as their own series, since a bench's point is the ratio.
 */
import type { Chart, ChartRow } from '../plot.js';
import { formatSize } from '../sizes.js';
import type { ClusterBenchReport } from './cluster-bench.js';
import type { CodecBenchReport } from './codec-bench.js';
import type { EngineBenchReport } from './engine-bench.js';
import type { FileBenchReport } from './file-bench.js';
import type { GpuBenchReport } from './gpu-bench.js';
import type { LlamaBenchReport } from './llama-bench.js';
import type { NetBenchReport } from './net-bench.js';
import type { WarehouseBenchReport } from './warehouse-bench.js';

const GBPS = 'GB/s (1e9 bytes per second)';

/** Drops a repeated (panel, series, x): a peer measured once shows once per x. */
function unique(rows: ChartRow[]): ChartRow[] {
  const seen = new Set<string>();
  return rows.filter((r) => {
    const key = `${r.panel ?? ''}\0${r.series}\0${r.x}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** `bench file`: GB/s per pass and block size; kvtier and fio per engine, node-fs alone. */
export function fileChart(r: FileBenchReport): Chart {
  const x = (p: { op: string; pattern: string; blockSize: number }): string =>
    `${p.pattern} ${p.op} ${formatSize(p.blockSize)}`;
  const rows: ChartRow[] = r.kvtier.map((k) => ({
    series: `kvtier ${k.engine}`,
    x: x(k),
    y: k.gbps,
  }));
  for (const row of r.rows) {
    const series = row.peer === 'fio' ? `fio ${row.engine}` : row.peer;
    rows.push({ series, x: x(row), y: row.peerGbps });
  }
  return {
    title: `kvtier bench file: ${formatSize(r.file.size)}, queue depth ${r.queueDepth}`,
    xTitle: 'pass and block size',
    yTitle: GBPS,
    rows: unique(rows),
  };
}

/** `bench warehouse`: one panel per section, each in its own unit. */
export function warehouseChart(r: WarehouseBenchReport): Chart {
  const rows: ChartRow[] = [];
  for (const row of r.rows) {
    if (row.section === 'io') {
      const panel = 'put/get (GB/s)';
      const x = `${row.op} ${formatSize(row.blockSize)}`;
      rows.push({ panel, series: 'kvtier', x, y: row.gbps });
      rows.push({ panel, series: 'raw engine', x, y: row.peerGbps });
    } else if (row.section === 'chainKeys') {
      const panel = 'chainKeys (ms per chain)';
      rows.push({ panel, series: 'kvtier', x: row.variant, y: row.ms });
      rows.push({ panel, series: 'createHash loop', x: row.variant, y: row.peerMs });
    } else {
      const panel = 'prefix lookup (M keys/s)';
      rows.push({ panel, series: 'kvtier', x: row.variant, y: row.keysPerSec / 1e6 });
      rows.push({ panel, series: 'Map', x: row.variant, y: row.peerKeysPerSec / 1e6 });
    }
  }
  return {
    title: 'kvtier bench warehouse',
    xTitle: 'measurement',
    yTitle: 'the unit of each panel',
    rows,
  };
}

/** `bench engine`: GB/s through the engine channel next to in-process Warehouse put/get. */
export function engineChart(r: EngineBenchReport): Chart {
  const rows: ChartRow[] = [];
  for (const row of r.rows) {
    const x = `${row.form} ${row.op}`;
    rows.push({ series: 'engine channel', x, y: row.channel.GBps });
    rows.push({ series: 'Warehouse in-process', x, y: row.warehouse.GBps });
  }
  return {
    title: `kvtier bench engine: ${r.options.blocks} blocks, batch ${r.options.batch}`,
    xTitle: 'pool layout and operation',
    yTitle: GBPS,
    rows,
  };
}

/** `bench net`: GB/s per operation and block size, iperf3 on the same path as its own series. */
export function netChart(r: NetBenchReport): Chart {
  const rows: ChartRow[] = [];
  for (const row of r.rows) {
    const x = `${row.op} ${formatSize(row.blockSize)}`;
    rows.push({ series: 'kvtier', x, y: row.gbps });
    if (row.peer !== null && row.peerGbps !== null) {
      rows.push({ series: row.peer, x, y: row.peerGbps });
    }
  }
  return {
    title: `kvtier bench net: ${r.peer} (${r.transport})`,
    xTitle: 'operation and block size',
    yTitle: GBPS,
    rows,
  };
}

/** `kvtier cluster bench`: lookups/s by concurrency and publish keys/s, kvtier next to naive. */
export function clusterChart(r: ClusterBenchReport): Chart {
  const rows: ChartRow[] = r.lookups.map((l) => ({
    panel: 'chain lookups (lookups/s)',
    series: l.client === 'kvtier' ? 'kvtier' : 'one command per key',
    x: `${l.inFlight} in flight`,
    y: l.lookupsPerSec,
  }));
  const panel = 'publish (keys/s)';
  const x = `${r.publish.keys} keys`;
  rows.push({ panel, series: 'kvtier', x, y: r.publish.kvtierKeysPerSec });
  rows.push({ panel, series: 'one command per key', x, y: r.publish.naiveKeysPerSec });
  return {
    title: `kvtier cluster bench: Redis ${r.redisVersion} (${r.mode}), ${r.options.nodes} nodes`,
    xTitle: 'measurement',
    yTitle: 'the unit of each panel',
    rows,
  };
}

/** `bench gpu`: GB/s per operation and size, each peer (PyTorch, POSIX) as its own series. */
export function gpuChart(r: GpuBenchReport): Chart {
  const rows: ChartRow[] = [];
  for (const row of r.rows) {
    const x = `${row.op} ${formatSize(row.size)}`;
    rows.push({ series: 'kvtier', x, y: row.gbps });
    if (row.peer !== null && row.peerGbps !== null) {
      rows.push({ series: row.peer, x, y: row.peerGbps });
    }
  }
  return {
    title: `kvtier bench gpu: ${r.device}`,
    xTitle: 'operation and size',
    yTitle: GBPS,
    rows,
  };
}

/** `bench llama`: time to first token per context, restored from each tier next to prefill. */
export function llamaChart(r: LlamaBenchReport): Chart {
  const rows: ChartRow[] = [];
  for (const row of r.rows) {
    const x = `${row.tokens} tokens`;
    rows.push({ series: 'full prefill', x, y: row.fullPrefillMs });
    rows.push({ series: 'restore from host tier', x, y: row.hostRestoreTtftMs });
    rows.push({ series: 'restore from file tier', x, y: row.fileRestoreTtftMs });
  }
  return {
    title: `kvtier bench llama: ${r.engine}, ${r.blockTokens}-token blocks`,
    xTitle: 'context',
    yTitle: 'time to first token (ms)',
    rows,
  };
}

/** `bench codec`: decode and encode GB/s per codec next to memcpy of the same decoded bytes. */
export function codecChart(r: CodecBenchReport): Chart {
  const rows: ChartRow[] = [];
  for (const row of r.speed) {
    rows.push({ series: 'decode', x: row.codec, y: row.decodeGBps });
    rows.push({ series: 'encode', x: row.codec, y: row.encodeGBps });
    rows.push({ series: 'memcpy (peer)', x: row.codec, y: row.memcpyGBps });
  }
  return {
    title: `kvtier bench codec: ${r.options.dtype} KV, one core (${r.isa})`,
    xTitle: 'codec',
    yTitle: GBPS,
    rows,
  };
}
