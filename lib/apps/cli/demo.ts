/**
 * `kvtier demo`: the project's main job on an embedded default. Opens a warehouse (host tier +
 * file tier) sized to this machine, runs a seeded multi-turn agent workload through it with real
 * bytes, checks every block it reads back, and reports hit rates, bytes moved and prefill saved.
 * `--dir DIR` keeps the file tier, so a second run starts warm.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import type { Command } from 'commander';

import { parseSize } from '../sizes.js';
import { KvtierError } from '../../index.js';
import {
  blockBytesOf,
  checkPositiveInteger,
  DEFAULT_BLOCK_TOKENS,
  DEFAULT_KV_BYTES_PER_TOKEN,
  defaultFileBytes,
  defaultHostBytes,
  ensureDir,
  freeDiskBytes,
  readSavedConfig,
  writeSavedConfig,
  type SavedConfig,
} from '../demo/config.js';
import { DemoProgressBar } from '../demo/progress.js';
import {
  formatHeader,
  formatSummary,
  summaryJson,
  type DemoConfig,
  type DemoSummary,
  type DemoWorkloadInfo,
} from '../demo/report.js';
import { runDemo } from '../demo/runner.js';
import { demoLlama } from './demo-llama.js';
import { distinctBlocks, generateWorkload } from '../demo/workload.js';

/** Requests in a default run: about 20 s on a 2-core build machine. */
export const DEFAULT_REQUESTS = 100;
export const DEFAULT_SEED = 1;

export interface DemoCommandOptions {
  requests?: string;
  seed?: string;
  dir?: string;
  hostBytes?: string;
  fileBytes?: string;
  blockTokens?: string;
  kvBytesPerToken?: string;
  json?: boolean;
  progress?: boolean;
  engine?: string;
  maxTokens?: string;
  threads?: string;
}

function integer(
  text: string | undefined,
  what: string,
  fallback: number,
  min: number,
  max: number,
): number {
  if (text === undefined) return fallback;
  if (!/^\s*\d+\s*$/.test(text)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${what} must be an integer from ${min} to ${max}, got '${text}'`,
    );
  }
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${what} must be an integer from ${min} to ${max}, got '${text}'`,
    );
  }
  return n;
}

function size(text: string | undefined, what: string): number | undefined {
  if (text === undefined) return undefined;
  const n = parseSize(text, what);
  if (n < 1)
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `${what} must be at least 1 byte, got '${text}'`);
  return n;
}

/** Everything the demo needs before it opens the warehouse; bad input throws KVTIER_BAD_ARGUMENT. */
export async function prepareDemo(opts: DemoCommandOptions): Promise<{
  config: DemoConfig;
  saved: SavedConfig | undefined;
  workload: ReturnType<typeof generateWorkload>;
  info: DemoWorkloadInfo;
}> {
  const requests = integer(opts.requests, '--requests', DEFAULT_REQUESTS, 1, 1_000_000);
  const seed = integer(opts.seed, '--seed', DEFAULT_SEED, 0, 0xffffffff);
  const optBlockTokens =
    opts.blockTokens === undefined
      ? undefined
      : integer(opts.blockTokens, '--block-tokens', 0, 1, 65536);
  const optKv = size(opts.kvBytesPerToken, '--kv-bytes-per-token');
  const optHost = size(opts.hostBytes, '--host-bytes');
  const optFile = size(opts.fileBytes, '--file-bytes');

  let dir: string;
  let kept: boolean;
  let saved: SavedConfig | undefined;
  if (opts.dir !== undefined) {
    if (opts.dir.trim() === '')
      throw new KvtierError('KVTIER_BAD_ARGUMENT', '--dir must not be empty');
    dir = resolve(opts.dir);
    kept = true;
    await ensureDir(dir);
    saved = await readSavedConfig(dir);
  } else {
    dir = await mkdtemp(join(tmpdir(), 'kvtier-demo-'));
    kept = false;
  }
  try {
    const blockTokens = optBlockTokens ?? saved?.blockTokens ?? DEFAULT_BLOCK_TOKENS;
    const kvBytesPerToken = optKv ?? saved?.kvBytesPerToken ?? DEFAULT_KV_BYTES_PER_TOKEN;
    checkPositiveInteger(blockTokens, '--block-tokens', 65536);
    const blockBytes = blockBytesOf(blockTokens, kvBytesPerToken);

    const workload = generateWorkload({ seed, requests });
    const distinct = distinctBlocks(workload, blockTokens).at(-1) ?? 0;

    let host: { bytes: number; why: string };
    if (optHost !== undefined) host = { bytes: optHost, why: 'given' };
    else if (saved && saved.blockBytes === blockBytes)
      host = { bytes: saved.hostBytes, why: `as in ${dir}` };
    else host = defaultHostBytes(blockBytes);
    let file: { bytes: number; why: string };
    if (optFile !== undefined) file = { bytes: optFile, why: 'given' };
    else if (saved && saved.blockBytes === blockBytes)
      file = { bytes: saved.fileBytes, why: `as in ${dir}` };
    else file = defaultFileBytes(blockBytes, host.bytes, distinct, await freeDiskBytes(dir));
    for (const [what, b] of [
      ['--host-bytes', host.bytes],
      ['--file-bytes', file.bytes],
    ] as const) {
      if (b < blockBytes) {
        throw new KvtierError(
          'KVTIER_BAD_ARGUMENT',
          `${what} must hold at least one ${blockBytes}-byte block, got ${b} bytes`,
        );
      }
    }
    const config: DemoConfig = {
      dir,
      kept,
      seed,
      blockTokens,
      kvBytesPerToken,
      blockBytes,
      hostBytes: Math.floor(host.bytes / blockBytes) * blockBytes,
      hostWhy: host.why,
      fileBytes: Math.floor(file.bytes / blockBytes) * blockBytes,
      fileWhy: file.why,
    };
    const info: DemoWorkloadInfo = {
      requests: workload.requests.length,
      sessions: workload.sessions,
      subagents: workload.subagents,
      systemPrompts: workload.options.systemPrompts,
      distinctBlocks: distinct,
      distinctBytes: distinct * blockBytes,
    };
    return { config, saved, workload, info };
  } catch (e) {
    if (!kept) await rm(dir, { recursive: true, force: true });
    throw e;
  }
}

async function demoCommand(opts: DemoCommandOptions): Promise<void> {
  if (opts.engine !== undefined && opts.engine !== 'none') {
    if (opts.engine !== 'llama') {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `--engine must be none or llama, got '${opts.engine}'`,
      );
    }
    return demoLlama(opts);
  }
  const { config, saved, workload, info } = await prepareDemo(opts);
  const progress = new DemoProgressBar({ json: opts.json, progress: opts.progress });
  const bar = progress.on ? progress : undefined;
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals): void => {
    controller.abort(new KvtierError('KVTIER_ABORTED', `interrupted by ${signal}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    if (!opts.json) process.stdout.write(formatHeader(config, info));
    const record: SavedConfig = {
      blockTokens: config.blockTokens,
      kvBytesPerToken: config.kvBytesPerToken,
      blockBytes: config.blockBytes,
      hostBytes: config.hostBytes,
      fileBytes: config.fileBytes,
    };
    // A new directory records its sizes up front, so even an interrupted run can be reopened.
    if (config.kept && !saved) await writeSavedConfig(config.dir, record);
    const result = await runDemo({
      dir: config.dir,
      blockTokens: config.blockTokens,
      blockBytes: config.blockBytes,
      hostBytes: config.hostBytes,
      fileBytes: config.fileBytes,
      workload,
      signal: controller.signal,
      ...(bar ? { onProgress: (p) => bar.update(p) } : {}),
    });
    bar?.clear();
    if (config.kept) await writeSavedConfig(config.dir, record);
    const summary: DemoSummary = { ...result, config, workload: info };
    process.stdout.write(opts.json ? summaryJson(summary) : formatSummary(summary));
  } catch (e) {
    bar?.clear();
    if (controller.signal.aborted) {
      if (!config.kept) await rm(config.dir, { recursive: true, force: true });
      process.stderr.write(`kvtier: interrupted${config.kept ? '' : `; ${config.dir} removed`}\n`);
      process.exit(130);
    }
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (!config.kept) await rm(config.dir, { recursive: true, force: true });
  }
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description(
      'run a multi-turn agent workload through a host + file tier warehouse, verifying every block',
    )
    .option('--requests <n>', `requests to run (default ${DEFAULT_REQUESTS})`)
    .option(
      '--seed <n>',
      `workload seed; the same seed gives the same workload (default ${DEFAULT_SEED})`,
    )
    .option(
      '--dir <dir>',
      'keep the file tier in DIR (a second run starts warm); default: a temporary directory, removed at the end',
    )
    .option('--host-bytes <size>', 'host tier capacity (default: min(256MiB, 1/16 of free memory))')
    .option(
      '--file-bytes <size>',
      'file tier capacity (default: 4 x host, or room for the workload; at most half the free disk)',
    )
    .option('--block-tokens <n>', `tokens per block (default ${DEFAULT_BLOCK_TOKENS})`)
    .option(
      '--kv-bytes-per-token <size>',
      'KV bytes per token (default 16KiB; Llama-3-8B bf16 is 128KiB)',
    )
    .option('--json', 'print the summary as JSON (nothing else on stdout)')
    .option('--no-progress', 'no progress bar, even on a terminal')
    .option(
      '--engine <name>',
      'none (blocks of synthetic bytes, the default) or llama: the workload on node-llama-cpp with a small random model, each continuation checked against full prefill',
    )
    .option('--max-tokens <n>', 'llama: tokens generated and checked per request (default 4)')
    .option('--threads <n>', 'llama: engine threads (default 2)')
    .action(demoCommand);
}
