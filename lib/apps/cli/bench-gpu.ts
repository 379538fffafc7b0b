/** `kvtier bench gpu`: the GPU data path next to PyTorch and POSIX peers on the same GPU. */
import Table from 'cli-table3';
import type { Command } from 'commander';

import {
  GPU_DEFAULTS,
  runGpuBench,
  type GpuBenchOptions,
  type GpuBenchReport,
} from '../bench/gpu-bench.js';
import { formatSize, parseSize, parseSizeList, parseCount } from '../sizes.js';
import { KvtierError } from '../../index.js';
import { gpuChart } from '../bench/charts.js';
import { finishBench, PLOT_OPTION, startBench } from './bench-output.js';

interface GpuCommandOptions {
  sizes: string;
  trials: string;
  fileSize: string;
  gatherBlocks: string;
  restoreTokens: string;
  dir: string;
  python: string;
  peer: boolean;
  json?: boolean;
  plot?: string;
}

export function gpuBenchOptions(opts: GpuCommandOptions): GpuBenchOptions {
  const restoreTokens = parseCount(opts.restoreTokens, 'restore tokens', 0);
  if (restoreTokens % 16 !== 0) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      'restore tokens must be a multiple of 16 (one block)',
    );
  }
  return {
    ...GPU_DEFAULTS,
    sizes: parseSizeList(opts.sizes, 'size'),
    trials: parseCount(opts.trials, 'trials', 1),
    fileBytes: parseSize(opts.fileSize, 'file size'),
    gatherBlocks: parseCount(opts.gatherBlocks, 'gather blocks', 1),
    restoreTokens,
    dir: opts.dir,
    python: opts.peer ? opts.python : null,
  };
}

export function formatGpuBench(r: GpuBenchReport): string {
  const out = [
    `kvtier bench gpu: ${r.device}, driver ${r.driver}, batch copy ${r.batchCopy ? 'yes' : 'no'}`,
  ];
  out.push(`cuFile: ${r.cufile}`);
  const table = new Table({
    head: ['op', 'size', 'kvtier GB/s', 'peer', 'peer GB/s', 'ratio'],
    colAligns: ['left', 'right', 'right', 'left', 'right', 'right'],
    style: { head: [], border: [] },
  });
  for (const row of r.rows) {
    table.push([
      row.op,
      formatSize(row.size),
      row.gbps.toFixed(2),
      row.peer ?? '-',
      row.peerGbps?.toFixed(2) ?? '-',
      row.ratio?.toFixed(2) ?? '-',
    ]);
  }
  out.push(table.toString());
  if (r.restore) {
    const s = r.restore;
    out.push(
      `restore ${s.tokens} tokens (${formatSize(s.bytes)}): host tier ${s.fromHostSeconds.toFixed(2)} s, ` +
        `file tier ${s.fromFileSeconds.toFixed(2)} s (${s.fileIo}); prefill ` +
        (s.prefillSeconds === null ? 'not measured' : `${s.prefillSeconds.toFixed(2)} s`) +
        (s.matmulTflops === null ? '' : ` (bf16 matmul ${s.matmulTflops.toFixed(0)} TFLOP/s)`),
    );
  }
  for (const note of r.notes) out.push(`note: ${note}`);
  return `${out.join('\n')}\n`;
}

export function registerGpuBench(bench: Command): void {
  bench
    .command('gpu')
    .description(
      'host<->GPU copies next to PyTorch, layout gathers next to contiguous copies, file->GPU ' +
        'through cuFile and POSIX next to preadv+copy, and a 128k-token restore next to prefill',
    )
    .option('--sizes <list>', 'copy sizes', '1MiB,4MiB,16MiB,64MiB,256MiB')
    .option(
      '--trials <n>',
      'timed passes per figure (median reported)',
      String(GPU_DEFAULTS.trials),
    )
    .option('--file-size <size>', 'file size for file->GPU', '1GiB')
    .option(
      '--gather-blocks <n>',
      'engine blocks per gather pass',
      String(GPU_DEFAULTS.gatherBlocks),
    )
    .option(
      '--restore-tokens <n>',
      'context to restore (0 skips)',
      String(GPU_DEFAULTS.restoreTokens),
    )
    .option('--dir <dir>', 'directory for the test files', '.')
    .option('--python <path>', 'python with CUDA PyTorch, for the peers', 'python3')
    .option('--no-peer', 'skip the PyTorch peers')
    .option(...PLOT_OPTION)
    .option('--json', 'print the report as JSON')
    .action(async (opts: GpuCommandOptions) => {
      const progress = startBench(opts);
      const options = gpuBenchOptions(opts);
      options.onProgress = (m) => progress.show(m);
      const report = await runGpuBench(options);
      await finishBench(opts, progress, report, {
        json: (r) => `${JSON.stringify(r, null, 2)}\n`,
        table: formatGpuBench,
        chart: gpuChart,
      });
    });
}
