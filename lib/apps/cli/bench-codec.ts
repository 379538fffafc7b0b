/** `kvtier bench codec`: KV block codecs' speed next to memcpy, and their accuracy. */
import type { Command } from 'commander';

import { KvtierError } from '../../index.js';
import {
  CODEC_DEFAULTS,
  codecBenchJson,
  formatCodecBench,
  runCodecBench,
  type CodecBenchOptions,
} from '../bench/codec-bench.js';
import { codecChart } from '../bench/charts.js';
import { finishBench, PLOT_OPTION, startBench } from './bench-output.js';
import { parseCount } from '../sizes.js';

type Raw = Record<keyof Omit<CodecBenchOptions, 'dtype'>, string> & {
  dtype: string;
  json?: boolean;
  plot?: string;
};

/** Turns the command line into options; bad input throws KVTIER_BAD_ARGUMENT. */
export function codecBenchOptions(raw: Raw): CodecBenchOptions {
  if (raw.dtype !== 'fp16' && raw.dtype !== 'bf16' && raw.dtype !== 'fp32') {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `dtype must be fp16, bf16 or fp32, got '${raw.dtype}'`,
    );
  }
  const out = { dtype: raw.dtype } as CodecBenchOptions;
  for (const key of Object.keys(CODEC_DEFAULTS) as (keyof CodecBenchOptions)[]) {
    if (key !== 'dtype') out[key] = parseCount(raw[key], key, 1);
  }
  return out;
}

export function registerCodecBench(bench: Command): void {
  const cmd = bench
    .command('codec')
    .description(
      'KV block codecs (fp8-e4m3, int8, kivi4, kivi2) on one core: encode (SIMD and scalar) and ' +
        'decode GB/s next to memcpy of the same decoded bytes, the asynchronous calls on the codec ' +
        'threads, bytes per block, and reconstruction and attention-output error on synthetic KV ' +
        'with outlier key channels',
    )
    .option('--dtype <dtype>', 'fp16, bf16 or fp32', CODEC_DEFAULTS.dtype);
  for (const [key, value] of Object.entries(CODEC_DEFAULTS)) {
    if (key === 'dtype') continue;
    const flag = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
    cmd.option(`--${flag} <n>`, key, String(value));
  }
  cmd
    .option('--json', 'print the report as JSON')
    .option(...PLOT_OPTION)
    .action(async (raw: Raw) => {
      const options = codecBenchOptions(raw);
      const progress = startBench(raw);
      progress.show('encoding and decoding (one core)...');
      const report = await runCodecBench(options);
      await finishBench(raw, progress, report, {
        json: codecBenchJson,
        table: formatCodecBench,
        chart: codecChart,
      });
    });
}
