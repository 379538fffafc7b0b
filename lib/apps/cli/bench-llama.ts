/** `kvtier bench llama`: time to first token on a real engine, restored through kvtier or prefilled. */
import type { Command } from 'commander';

import {
  formatLlamaBench,
  LLAMA_DEFAULTS,
  runLlamaBench,
  type LlamaBenchOptions,
} from '../bench/llama-bench.js';
import { KvtierError } from '../../index.js';
import { llamaChart } from '../bench/charts.js';
import { finishBench, PLOT_OPTION, startBench } from './bench-output.js';
import { parseCount } from '../sizes.js';

interface LlamaCommandOptions {
  contexts: string;
  blockTokens: string;
  threads: string;
  maxPrefillSeconds: string;
  dir?: string;
  json?: boolean;
  plot?: string;
}

export function llamaBenchOptions(opts: LlamaCommandOptions): LlamaBenchOptions {
  const contexts = opts.contexts.split(',').map((c) => {
    const m = /^\s*(\d+)\s*(k?)\s*$/i.exec(c);
    if (!m) throw new KvtierError('KVTIER_BAD_ARGUMENT', `not a token count: '${c}'`);
    return Number(m[1]) * (m[2] ? 1024 : 1);
  });
  const out: LlamaBenchOptions = {
    contexts,
    blockTokens: parseCount(opts.blockTokens, 'block tokens', 1),
    threads: parseCount(opts.threads, 'threads', 1),
    maxPrefillSeconds: parseCount(opts.maxPrefillSeconds, 'max prefill seconds', 1),
  };
  if (opts.dir !== undefined) out.dir = opts.dir;
  return out;
}

export function registerLlamaBench(bench: Command): void {
  bench
    .command('llama')
    .description(
      'time to first token on node-llama-cpp (CPU) with a random llama model: KV state restored ' +
        'from the host tier and from the file tier next to full prefill, same model, same run',
    )
    .option('--contexts <list>', 'prompt lengths in tokens (k = 1024)', '1k,4k,16k')
    .option('--block-tokens <n>', 'tokens per block', String(LLAMA_DEFAULTS.blockTokens))
    .option('--threads <n>', 'engine threads', String(LLAMA_DEFAULTS.threads))
    .option(
      '--max-prefill-seconds <s>',
      'skip a context whose prefill would take longer (extrapolated)',
      String(LLAMA_DEFAULTS.maxPrefillSeconds),
    )
    .option('--dir <dir>', 'directory for the model and the file tier (default: the temp dir)')
    .option(...PLOT_OPTION)
    .option('--json', 'print the report as JSON')
    .action(async (opts: LlamaCommandOptions) => {
      const progress = startBench(opts);
      const options = llamaBenchOptions(opts);
      options.onProgress = (m) => progress.show(m);
      const report = await runLlamaBench(options);
      await finishBench(opts, progress, report, {
        json: (r) => `${JSON.stringify(r, null, 2)}\n`,
        table: formatLlamaBench,
        chart: llamaChart,
      });
    });
}
