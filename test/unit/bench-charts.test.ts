/**
 * `--plot` for every bench: each bench's report becomes chart rows that carry its figures (and its
 * peer's, as their own series), the chart module refuses a file it cannot write before any run,
 * and progress follows one rule (a terminal, no --json).
 */
import { describe, expect, it } from 'vitest';

import {
  clusterChart,
  engineChart,
  fileChart,
  gpuChart,
  llamaChart,
  netChart,
  warehouseChart,
} from '../../lib/apps/bench/charts.js';
import type { ClusterBenchReport } from '../../lib/apps/bench/cluster-bench.js';
import type { EngineBenchReport, Rate } from '../../lib/apps/bench/engine-bench.js';
import type { FileBenchReport } from '../../lib/apps/bench/file-bench.js';
import type { GpuBenchReport } from '../../lib/apps/bench/gpu-bench.js';
import type { LlamaBenchReport, LlamaBenchRow } from '../../lib/apps/bench/llama-bench.js';
import type { NetBenchReport, NetRow } from '../../lib/apps/bench/net-bench.js';
import type { WarehouseBenchReport } from '../../lib/apps/bench/warehouse-bench.js';
import { chartSpec, checkPlotFile, type ChartRow } from '../../lib/apps/plot.js';
import {
  bar,
  clearProgress,
  ProgressBar,
  ProgressLine,
  showsProgress,
  type ProgressStream,
} from '../../lib/apps/progress.js';
import { plotRows } from '../../lib/apps/sim/plot.js';
import { badArgument } from '../helpers.js';

const MiB = 2 ** 20;

/** The y of the one row with this series and x (and panel); fails on none or several. */
function y(rows: ChartRow[], series: string, x: string | number, panel?: string): number {
  const found = rows.filter((r) => r.series === series && r.x === x && r.panel === panel);
  expect(found, `${series} at ${x}`).toHaveLength(1);
  return found[0]!.y;
}

describe('bench chart rows', () => {
  it('bench file: kvtier per engine, fio per engine, node-fs once per pass', () => {
    const pass = { op: 'read', pattern: 'seq', blockSize: MiB, queueDepth: 4 } as const;
    const report = {
      kvtier: [
        { ...pass, engine: 'io_uring', gbps: 5 },
        { ...pass, engine: 'threads', gbps: 4 },
      ],
      // One row per (kvtier measurement, peer); node-fs has no engine and repeats per engine.
      rows: [
        { ...pass, engine: 'io_uring', gbps: 5, peer: 'fio', peerGbps: 6, ratio: 5 / 6 },
        { ...pass, engine: 'io_uring', gbps: 5, peer: 'node-fs', peerGbps: 2, ratio: 2.5 },
        { ...pass, engine: 'threads', gbps: 4, peer: 'fio', peerGbps: 5, ratio: 0.8 },
        { ...pass, engine: 'threads', gbps: 4, peer: 'node-fs', peerGbps: 2, ratio: 2 },
      ],
      file: { size: 4 * MiB },
      queueDepth: 4,
    } as unknown as FileBenchReport;
    const chart = fileChart(report);
    const x = 'seq read 1MiB';
    expect(y(chart.rows, 'kvtier io_uring', x)).toBe(5);
    expect(y(chart.rows, 'kvtier threads', x)).toBe(4);
    expect(y(chart.rows, 'fio io_uring', x)).toBe(6);
    expect(y(chart.rows, 'fio threads', x)).toBe(5);
    expect(y(chart.rows, 'node-fs', x)).toBe(2);
    expect(chart.rows).toHaveLength(5);
    expect(chart.yTitle).toMatch(/GB\/s/);
  });

  it('bench warehouse: one panel per section, kvtier next to its peer in each', () => {
    const report = {
      rows: [
        { section: 'io', op: 'put', blockSize: MiB, gbps: 3, peer: 'engine', peerGbps: 4 },
        { section: 'io', op: 'get', blockSize: MiB, gbps: 5, peer: 'engine', peerGbps: 5.5 },
        { section: 'chainKeys', variant: 'bytes', ms: 1.5, peerMs: 6 },
        { section: 'lookup', variant: 'BlockIndex.prefix', keysPerSec: 2e7, peerKeysPerSec: 4e7 },
      ],
    } as unknown as WarehouseBenchReport;
    const { rows } = warehouseChart(report);
    const io = 'put/get (GB/s)';
    expect(y(rows, 'kvtier', 'put 1MiB', io)).toBe(3);
    expect(y(rows, 'raw engine', 'put 1MiB', io)).toBe(4);
    expect(y(rows, 'kvtier', 'get 1MiB', io)).toBe(5);
    expect(y(rows, 'raw engine', 'get 1MiB', io)).toBe(5.5);
    expect(y(rows, 'kvtier', 'bytes', 'chainKeys (ms per chain)')).toBe(1.5);
    expect(y(rows, 'createHash loop', 'bytes', 'chainKeys (ms per chain)')).toBe(6);
    expect(y(rows, 'kvtier', 'BlockIndex.prefix', 'prefix lookup (M keys/s)')).toBe(20);
    expect(y(rows, 'Map', 'BlockIndex.prefix', 'prefix lookup (M keys/s)')).toBe(40);
    expect(rows).toHaveLength(8);
  });

  it('bench engine: the channel next to in-process put/get per layout and operation', () => {
    const rate = (GBps: number): Rate => ({
      seconds: 1,
      blocksPerSec: 1,
      GBps,
      cpuSecondsPerGB: 1,
    });
    const report = {
      options: { blocks: 8, batch: 2 },
      rows: [
        { form: 'block-major', op: 'save', channel: rate(7), warehouse: rate(8) },
        { form: 'kv-first', op: 'load', channel: rate(3), warehouse: rate(2) },
      ],
    } as unknown as EngineBenchReport;
    const { rows } = engineChart(report);
    expect(y(rows, 'engine channel', 'block-major save')).toBe(7);
    expect(y(rows, 'Warehouse in-process', 'block-major save')).toBe(8);
    expect(y(rows, 'engine channel', 'kv-first load')).toBe(3);
    expect(y(rows, 'Warehouse in-process', 'kv-first load')).toBe(2);
    expect(rows).toHaveLength(4);
  });

  it('bench net: kvtier per operation, iperf3 only where it ran', () => {
    const row = (op: 'get' | 'put', blockSize: number, gbps: number, peer: number | null) =>
      ({
        op,
        blockSize,
        gbps,
        peer: peer === null ? null : 'iperf3',
        peerGbps: peer,
        ratio: peer === null ? null : gbps / peer,
      }) as NetRow;
    const report = {
      peer: '127.0.0.1:1',
      transport: 'tcp',
      rows: [row('put', MiB, 2, 4), row('get', MiB, 3, 4), row('get', 64 << 10, 0.5, null)],
    } as unknown as NetBenchReport;
    const { rows } = netChart(report);
    expect(y(rows, 'kvtier', 'put 1MiB')).toBe(2);
    expect(y(rows, 'iperf3', 'put 1MiB')).toBe(4);
    expect(y(rows, 'kvtier', 'get 1MiB')).toBe(3);
    expect(y(rows, 'kvtier', 'get 64KiB')).toBe(0.5);
    expect(rows.filter((r) => r.series === 'iperf3')).toHaveLength(2);
    expect(rows).toHaveLength(5);
  });

  it('cluster bench: lookups per concurrency and publish, kvtier next to one command per key', () => {
    const report = {
      redisVersion: '7',
      mode: 'standalone',
      options: { nodes: 2 },
      lookups: [
        { client: 'kvtier', inFlight: 1, lookupsPerSec: 900 },
        { client: 'naive', inFlight: 1, lookupsPerSec: 30 },
        { client: 'kvtier', inFlight: 8, lookupsPerSec: 5000 },
        { client: 'naive', inFlight: 8, lookupsPerSec: 200 },
      ],
      publish: { keys: 100, kvtierKeysPerSec: 1e5, naiveKeysPerSec: 1e4 },
    } as unknown as ClusterBenchReport;
    const { rows } = clusterChart(report);
    const lookups = 'chain lookups (lookups/s)';
    expect(y(rows, 'kvtier', '1 in flight', lookups)).toBe(900);
    expect(y(rows, 'one command per key', '1 in flight', lookups)).toBe(30);
    expect(y(rows, 'kvtier', '8 in flight', lookups)).toBe(5000);
    expect(y(rows, 'one command per key', '8 in flight', lookups)).toBe(200);
    expect(y(rows, 'kvtier', '100 keys', 'publish (keys/s)')).toBe(1e5);
    expect(y(rows, 'one command per key', '100 keys', 'publish (keys/s)')).toBe(1e4);
    expect(rows).toHaveLength(6);
  });

  it('bench gpu: kvtier per operation and size, each peer as its own series', () => {
    const report = {
      device: 'test',
      rows: [
        { op: 'h2d', size: MiB, gbps: 40, peer: 'torch', peerGbps: 45, ratio: 40 / 45 },
        { op: 'gather', size: 4 * MiB, gbps: 30, peer: 'contiguous', peerGbps: 35, ratio: 0.9 },
        { op: 'file', size: MiB, gbps: 5, peer: null, peerGbps: null, ratio: null },
      ],
    } as unknown as GpuBenchReport;
    const { rows } = gpuChart(report);
    expect(y(rows, 'kvtier', 'h2d 1MiB')).toBe(40);
    expect(y(rows, 'torch', 'h2d 1MiB')).toBe(45);
    expect(y(rows, 'kvtier', 'gather 4MiB')).toBe(30);
    expect(y(rows, 'contiguous', 'gather 4MiB')).toBe(35);
    expect(y(rows, 'kvtier', 'file 1MiB')).toBe(5);
    expect(rows).toHaveLength(5);
  });

  it('bench llama: time to first token per context, both restores next to full prefill', () => {
    const row = (tokens: number, full: number, host: number, file: number): LlamaBenchRow =>
      ({
        tokens,
        fullPrefillMs: full,
        hostRestoreTtftMs: host,
        fileRestoreTtftMs: file,
      }) as LlamaBenchRow;
    const report = {
      engine: 'node-llama-cpp',
      blockTokens: 256,
      rows: [row(1024, 900, 30, 45), row(4096, 4000, 90, 120)],
    } as unknown as LlamaBenchReport;
    const { rows } = llamaChart(report);
    expect(y(rows, 'full prefill', '1024 tokens')).toBe(900);
    expect(y(rows, 'restore from host tier', '1024 tokens')).toBe(30);
    expect(y(rows, 'restore from file tier', '1024 tokens')).toBe(45);
    expect(y(rows, 'full prefill', '4096 tokens')).toBe(4000);
    expect(y(rows, 'restore from file tier', '4096 tokens')).toBe(120);
    expect(rows).toHaveLength(6);
  });

  it('sim: one line per policy in percent, and the ceiling at every capacity', () => {
    const rows = plotRows(
      [
        { policy: 'lru', capacity: 1, hitRate: 0.1 },
        { policy: 'lru', capacity: 5, hitRate: 0.3 },
      ],
      0.5,
    );
    expect(y(rows, 'lru', 1)).toBeCloseTo(10);
    expect(y(rows, 'lru', 5)).toBeCloseTo(30);
    expect(y(rows, 'ceiling (∞)', 1)).toBe(50);
    expect(y(rows, 'ceiling (∞)', 5)).toBe(50);
  });
});

describe('chart module', () => {
  it.each(['out.jpg', 'out', 'out.svg.txt', 'png'])('refuses --plot %s', (file) => {
    expect(badArgument(() => checkPlotFile(file))).toMatch(/must end in \.svg or \.png/);
  });

  it('takes .svg and .png in any case', () => {
    expect(checkPlotFile('a.SVG')).toBe('svg');
    expect(checkPlotFile('/tmp/x.Png')).toBe('png');
  });

  it('groups bars by x in the order measured, one view per panel', () => {
    const flat = chartSpec({
      title: 't',
      xTitle: 'x',
      yTitle: 'y',
      rows: [{ series: 'kvtier', x: '4MiB', y: 1 }],
    });
    const enc = (flat.encoding as Record<string, { sort?: unknown }>) ?? {};
    expect(enc.x?.sort).toBeNull();
    expect(enc.xOffset).toBeDefined();
    const panels = chartSpec({
      title: 't',
      xTitle: 'x',
      yTitle: 'y',
      rows: [
        { panel: 'a (GB/s)', series: 'kvtier', x: 1, y: 1 },
        { panel: 'b (ms)', series: 'kvtier', x: 1, y: 2 },
      ],
    });
    expect((panels.hconcat as unknown[]).length).toBe(2);
  });
});

describe('progress', () => {
  function fake(isTTY: boolean): ProgressStream & { text: string } {
    const s = {
      isTTY,
      columns: 60,
      text: '',
      write(t: string) {
        s.text += t;
        return true;
      },
    };
    return s;
  }

  it('shows on a terminal only, never with --json or --no-progress', () => {
    expect(showsProgress({ stream: fake(true) })).toBe(true);
    expect(showsProgress({ stream: fake(false) })).toBe(false);
    expect(showsProgress({ stream: fake(true), json: true })).toBe(false);
    expect(showsProgress({ stream: fake(true), progress: false })).toBe(false);
  });

  it('writes nothing when off, and a cleared line of at most the width when on', () => {
    const off = fake(false);
    const json = fake(true);
    new ProgressLine({ stream: off }).show('pass 1');
    const j = new ProgressLine({ stream: json, json: true });
    j.show('pass 1');
    j.note('kvtier: a notice');
    expect(off.text).toBe('');
    expect(json.text).toBe('kvtier: a notice\n');
    const tty = fake(true);
    const line = new ProgressLine({ stream: tty });
    line.show('x'.repeat(100));
    expect(tty.text).toBe(`\r\x1b[K${'x'.repeat(59)}`);
    clearProgress(); // what the CLI does before printing an error
    expect(tty.text.endsWith('\r\x1b[K')).toBe(true);
    tty.text = '';
    line.clear();
    expect(tty.text).toBe('');
  });

  it('draws a bar with its label and percentage, and the text given instead', () => {
    expect(bar(0.5, 4)).toBe('██░░');
    expect(bar(2, 3)).toBe('███');
    const tty = fake(true);
    const p = new ProgressBar({ stream: tty, label: 'replaying', width: 4 });
    p.update(4, 4);
    expect(tty.text).toBe(`\r\x1b[K${'replaying'.padEnd(18)} ████ 100%`);
    tty.text = '';
    p.update(2, 2, '2/2 requests');
    expect(tty.text).toContain('████ 2/2 requests');
    p.clear();
  });
});
