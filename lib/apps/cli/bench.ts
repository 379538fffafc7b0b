/** `kvtier bench <path>`: measure a data path next to the obvious peer, in the same run. */
import { unlinkSync } from 'node:fs';

import type { Command } from 'commander';

import { KvtierError } from '../../index.js';
import { registerCodecBench } from './bench-codec.js';
import { registerGpuBench } from './bench-gpu.js';
import { registerLlamaBench } from './bench-llama.js';
import { DEFAULTS, runFileBench, type FileBenchOptions } from '../bench/file-bench.js';
import { fileBenchJson, formatFileBench } from '../bench/report.js';
import { formatSize, parseSize, parseSizeList } from '../sizes.js';
import { KEYS_DEFAULTS } from '../bench/keys-bench.js';
import {
  runWarehouseBench,
  WAREHOUSE_DEFAULTS,
  type WarehouseBenchOptions,
} from '../bench/warehouse-bench.js';
import { formatWarehouseBench, warehouseBenchJson } from '../bench/warehouse-report.js';
import {
  ENGINE_DEFAULTS,
  engineBenchJson,
  formatEngineBench,
  runEngineBench,
  type EngineBenchForm,
} from '../bench/engine-bench.js';
import { formatNetBench, NET_DEFAULTS, netBenchJson, runNetBench } from '../bench/net-bench.js';
import { engineChart, fileChart, netChart, warehouseChart } from '../bench/charts.js';
import { finishBench, PLOT_OPTION, startBench } from './bench-output.js';

interface FileCommandOptions {
  dir?: string;
  size: string;
  blockSize: string;
  blockSizes?: string;
  queueDepth: string;
  engine?: string;
  reps: string;
  fio: string | boolean;
  fioMem?: string;
  nodeFs: boolean;
  json?: boolean;
  plot?: string;
}

function count(text: string, what: string): number {
  if (!/^\s*\d+\s*$/.test(text)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${what} must be a positive integer, got '${text}'`,
    );
  }
  return Number(text);
}

/** Turns the command line into benchmark options; bad input throws KVTIER_BAD_ARGUMENT. */
export function fileBenchOptions(opts: FileCommandOptions): FileBenchOptions {
  const out: FileBenchOptions = {
    size: parseSize(opts.size, 'size'),
    blockSizes:
      opts.blockSizes !== undefined
        ? parseSizeList(opts.blockSizes, 'block size')
        : [parseSize(opts.blockSize, 'block size')],
    queueDepth: count(opts.queueDepth, 'queue depth'),
    reps: count(opts.reps, 'reps'),
    nodeFs: opts.nodeFs,
  };
  if (opts.dir !== undefined) out.dir = opts.dir;
  if (opts.engine !== undefined) {
    if (opts.engine !== 'io_uring' && opts.engine !== 'threads') {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `engine must be 'io_uring' or 'threads', got '${opts.engine}'`,
      );
    }
    out.engines = [opts.engine];
  }
  if (opts.fio === false) out.fio = false;
  else if (typeof opts.fio === 'string') out.fio = opts.fio;
  if (opts.fioMem !== undefined) out.fioMem = opts.fioMem;
  return out;
}

/**
 * Runs a benchmark that stops between passes on Ctrl-C (or SIGTERM) and removes its test files.
 * `onSecondSignal` runs when a second signal arrives before the benchmark has stopped.
 */
async function interruptible<T>(
  run: (signal: AbortSignal) => Promise<T>,
  progress: { clear(): void },
  onSecondSignal?: () => void,
): Promise<T> {
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals): void => {
    if (!controller.signal.aborted) {
      controller.abort(new KvtierError('KVTIER_ABORTED', `interrupted by ${signal}`));
      return;
    }
    if (onSecondSignal) {
      onSecondSignal();
      progress.clear();
      process.exit(130);
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    return await run(controller.signal);
  } catch (e) {
    progress.clear();
    if (controller.signal.aborted) {
      process.stderr.write('kvtier: interrupted; test files removed\n');
      process.exit(130);
    }
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

async function fileCommand(opts: FileCommandOptions): Promise<void> {
  const progress = startBench(opts);
  const options = fileBenchOptions(opts);
  options.onProgress = (message) => progress.show(message);
  options.onNotice = (message) => {
    if (opts.json) return; // in JSON the report says it (fioMissing)
    progress.note(`kvtier: ${message}`);
  };
  // A second Ctrl-C exits at once (a running fio is killed), still removing the test files.
  const files: string[] = [];
  options.onFile = (path) => files.push(path);
  const report = await interruptible(
    (signal) => runFileBench({ ...options, signal }),
    progress,
    () => {
      for (const path of files) {
        try {
          unlinkSync(path);
        } catch {
          // gone already
        }
      }
    },
  );
  await finishBench(opts, progress, report, {
    json: fileBenchJson,
    table: formatFileBench,
    chart: fileChart,
  });
}

interface WarehouseCommandOptions {
  dir?: string;
  size: string;
  blockSizes: string;
  batch: string;
  inFlight: string;
  queueDepth: string;
  engine?: string;
  reps: string;
  tokens: string;
  blockTokens: string;
  chainSamples: string;
  lookupKeys: string;
  lookupSamples: string;
  io: boolean;
  chainKeys: boolean;
  lookup: boolean;
  json?: boolean;
  plot?: string;
}

/** Turns `bench warehouse`'s command line into options; bad input throws KVTIER_BAD_ARGUMENT. */
export function warehouseBenchOptions(opts: WarehouseCommandOptions): WarehouseBenchOptions {
  const out: WarehouseBenchOptions = {
    size: parseSize(opts.size, 'size'),
    blockSizes: parseSizeList(opts.blockSizes, 'block size'),
    batch: count(opts.batch, 'batch'),
    inFlight: count(opts.inFlight, 'in-flight'),
    queueDepth: count(opts.queueDepth, 'queue depth'),
    reps: count(opts.reps, 'reps'),
    io: opts.io,
    chainKeys: opts.chainKeys,
    lookup: opts.lookup,
    keys: {
      tokens: count(opts.tokens, 'tokens'),
      blockTokens: count(opts.blockTokens, 'block tokens'),
      chainSamples: count(opts.chainSamples, 'chain samples'),
      lookupKeys: count(opts.lookupKeys, 'lookup keys'),
      lookupSamples: count(opts.lookupSamples, 'lookup samples'),
    },
  };
  if (opts.dir !== undefined) out.dir = opts.dir;
  if (opts.engine !== undefined) {
    if (opts.engine !== 'io_uring' && opts.engine !== 'threads') {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `engine must be 'io_uring' or 'threads', got '${opts.engine}'`,
      );
    }
    out.engine = opts.engine;
  }
  return out;
}

async function warehouseCommand(opts: WarehouseCommandOptions): Promise<void> {
  const progress = startBench(opts);
  const options = warehouseBenchOptions(opts);
  options.onProgress = (message) => progress.show(message);
  // The run's own cleanup removes the test files once it stops between passes.
  const report = await interruptible(
    (signal) => runWarehouseBench({ ...options, signal }),
    progress,
  );
  await finishBench(opts, progress, report, {
    json: warehouseBenchJson,
    table: formatWarehouseBench,
    chart: warehouseChart,
  });
}

interface EngineCommandOptions {
  blocks: string;
  batch: string;
  inFlight: string;
  reps: string;
  layers: string;
  forms: string;
  json?: boolean;
  plot?: string;
}

async function engineCommand(opts: EngineCommandOptions): Promise<void> {
  const progress = startBench(opts);
  const forms = opts.forms.split(',').map((f) => f.trim());
  for (const f of forms) {
    if (f !== 'block-major' && f !== 'kv-first') {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `forms are block-major and kv-first, got '${f}'`,
      );
    }
  }
  const report = await runEngineBench({
    blocks: count(opts.blocks, 'blocks'),
    batch: count(opts.batch, 'batch'),
    inFlight: count(opts.inFlight, 'in-flight'),
    reps: count(opts.reps, 'reps'),
    numLayers: count(opts.layers, 'layers'),
    forms: forms as EngineBenchForm[],
    onProgress: (m) => progress.show(m),
  });
  await finishBench(opts, progress, report, {
    json: engineBenchJson,
    table: formatEngineBench,
    chart: engineChart,
  });
}

interface NetCommandOptions {
  peer?: string;
  tokenFile?: string;
  blockSize: string;
  inflight: string;
  bytes: string;
  smallBlockSize: string;
  smallOps: string;
  reps: string;
  iperf3: string | boolean;
  iperfSeconds?: string;
  json?: boolean;
  plot?: string;
}

async function netCommand(opts: NetCommandOptions, cmd: Command): Promise<void> {
  const progress = startBench(opts);
  const report = await interruptible(
    (signal) =>
      runNetBench({
        ...(opts.peer !== undefined ? { peer: opts.peer } : {}),
        ...(opts.tokenFile !== undefined ? { tokenFile: opts.tokenFile } : {}),
        blockSize: parseSize(opts.blockSize, 'block size'),
        inflight: count(opts.inflight, 'in flight'),
        bytes: parseSize(opts.bytes, 'bytes'),
        fixedBytes: cmd.getOptionValueSource('bytes') !== 'default',
        smallBlockSize: parseSize(opts.smallBlockSize, 'small block size'),
        smallOps: count(opts.smallOps, 'small ops'),
        reps: count(opts.reps, 'reps'),
        ...(opts.iperf3 === false ? { iperf3: false as const } : {}),
        ...(typeof opts.iperf3 === 'string' ? { iperf3: opts.iperf3 } : {}),
        ...(opts.iperfSeconds !== undefined
          ? { iperfSeconds: count(opts.iperfSeconds, 'iperf3 seconds') }
          : {}),
        onProgress: (m) => progress.show(m),
        signal,
      }),
    progress,
  );
  await finishBench(opts, progress, report, {
    json: netBenchJson,
    table: formatNetBench,
    chart: netChart,
  });
}

export function registerBench(program: Command): void {
  const bench = program
    .command('bench')
    .description('measure a kvtier data path next to its obvious peer');
  registerGpuBench(bench);
  registerCodecBench(bench);
  registerLlamaBench(bench);
  bench
    .command('file')
    .description(
      'O_DIRECT sequential and random reads and writes through kvtier, next to fio on the same ' +
        'file (and a plain fs.promises loop), alternating runs; reports medians and ratios',
    )
    .option('--dir <dir>', 'directory for the test files (default: the OS temp dir)')
    .option('--size <size>', 'file size, e.g. 1GiB', formatSize(DEFAULTS.size))
    .option('--block-size <size>', 'bytes per transfer, e.g. 1MiB', formatSize(DEFAULTS.blockSize))
    .option(
      '--block-sizes <list>',
      'several block sizes, e.g. 256KiB,1MiB,4MiB (overrides --block-size)',
    )
    .option(
      '--queue-depth <n>',
      'transfers in flight (io_uring depth / pool threads / fio iodepth or numjobs)',
      String(DEFAULTS.queueDepth),
    )
    .option('--engine <kind>', 'io_uring or threads (default: both, io_uring where usable)')
    .option('--reps <n>', 'repetitions; the median is reported', String(DEFAULTS.reps))
    .option('--fio <path>', 'the fio to run (default: fio on PATH)')
    .option('--no-fio', 'do not run fio')
    .option('--fio-mem <type>', "fio's buffer type (fio --mem), e.g. mmaphuge")
    .option('--no-node-fs', 'do not run the fs.promises peer')
    .option(...PLOT_OPTION)
    .option('--json', 'print the report as JSON on stdout')
    .action(fileCommand);
  bench
    .command('warehouse')
    .description(
      'Warehouse put/get on an O_DIRECT file tier next to the raw file engine moving the same ' +
        'bytes; chainKeys next to a createHash loop; prefix lookups next to a Map; alternating ' +
        'runs, medians and ratios',
    )
    .option('--dir <dir>', 'directory for the test files (default: the OS temp dir)')
    .option(
      '--size <size>',
      'bytes put and got per pass and block size',
      formatSize(WAREHOUSE_DEFAULTS.size),
    )
    .option(
      '--block-sizes <list>',
      'block sizes, e.g. 256KiB,1MiB,4MiB',
      WAREHOUSE_DEFAULTS.blockSizes.map(formatSize).join(','),
    )
    .option(
      '--batch <n>',
      'blocks per put/get call and per engine batch',
      String(WAREHOUSE_DEFAULTS.batch),
    )
    .option('--in-flight <n>', 'calls in flight at once', String(WAREHOUSE_DEFAULTS.inFlight))
    .option(
      '--queue-depth <n>',
      'engine queue depth (both sides)',
      String(WAREHOUSE_DEFAULTS.queueDepth),
    )
    .option('--engine <kind>', 'io_uring or threads (default: io_uring where usable)')
    .option(
      '--reps <n>',
      'repetitions of the put/get passes; the median is reported',
      String(WAREHOUSE_DEFAULTS.reps),
    )
    .option('--tokens <n>', 'prompt length for chainKeys', String(KEYS_DEFAULTS.tokens))
    .option('--block-tokens <n>', 'tokens per block', String(KEYS_DEFAULTS.blockTokens))
    .option(
      '--chain-samples <n>',
      'timed chainKeys samples per variant',
      String(KEYS_DEFAULTS.chainSamples),
    )
    .option(
      '--lookup-keys <n>',
      'chain length for the prefix lookups',
      String(KEYS_DEFAULTS.lookupKeys),
    )
    .option(
      '--lookup-samples <n>',
      'timed lookup samples per variant',
      String(KEYS_DEFAULTS.lookupSamples),
    )
    .option('--no-io', 'skip the put/get section')
    .option('--no-chain-keys', 'skip the chainKeys section')
    .option('--no-lookup', 'skip the lookup section')
    .option(...PLOT_OPTION)
    .option('--json', 'print the report as JSON on stdout')
    .action(warehouseCommand);
  bench
    .command('engine')
    .description(
      'blocks saved and loaded through the engine channel of a kvtier serve child (a host pool ' +
        'shared by descriptor) next to in-process Warehouse put and get of the same blocks; ' +
        'alternating runs, medians and ratios',
    )
    .option('--blocks <n>', 'blocks per pass', String(ENGINE_DEFAULTS.blocks))
    .option('--batch <n>', 'blocks per call', String(ENGINE_DEFAULTS.batch))
    .option('--in-flight <n>', 'calls in flight at once', String(ENGINE_DEFAULTS.inFlight))
    .option('--reps <n>', 'repetitions; medians are reported', String(ENGINE_DEFAULTS.reps))
    .option(
      '--layers <n>',
      'model layers (64 KiB of block per layer)',
      String(ENGINE_DEFAULTS.numLayers),
    )
    .option('--forms <list>', 'pool layouts: block-major, kv-first', 'block-major,kv-first')
    .option(...PLOT_OPTION)
    .option('--json', 'print the report as JSON on stdout')
    .action(engineCommand);
  bench
    .command('net')
    .description(
      'put and get through a kvtier peer over TCP next to iperf3 on the same path, in the same ' +
        'run; starts kvtier serve on loopback when no --peer is given',
    )
    .option('--peer <host:port>', 'a running kvtier serve (default: start one on loopback)')
    .option('--token-file <file>', "the peer's shared secret (with --peer)")
    .option('--block-size <size>', 'bytes per operation', formatSize(NET_DEFAULTS.blockSize))
    .option('--inflight <n>', 'operations in flight', String(NET_DEFAULTS.inflight))
    .option(
      '--bytes <size>',
      'bytes per timed pass at --block-size',
      formatSize(NET_DEFAULTS.bytes),
    )
    .option(
      '--small-block-size <size>',
      'block size of the operations-per-second rows',
      formatSize(NET_DEFAULTS.smallBlockSize),
    )
    .option(
      '--small-ops <n>',
      'operations per timed pass at the small block size',
      String(NET_DEFAULTS.smallOps),
    )
    .option('--reps <n>', 'repetitions; medians are reported', String(NET_DEFAULTS.reps))
    .option('--iperf3 <path>', 'the iperf3 to run (default: iperf3 on PATH)')
    .option('--no-iperf3', 'do not run iperf3')
    .option('--iperf-seconds <n>', 'seconds per iperf3 run', String(NET_DEFAULTS.iperfSeconds))
    .option(...PLOT_OPTION)
    .option('--json', 'print the report as JSON on stdout')
    .action(netCommand);
}
