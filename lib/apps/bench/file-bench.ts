/**
 * `kvtier bench file`: sequential and random O_DIRECT reads and writes through kvtier's engines,
 * next to fio doing the same work on the same file in the same run, and next to the fs.promises
 * loop a Node user would write by hand.
 *
 * Method: one file of `size` bytes, preallocated and fully written before anything is timed. For
 * every block size, repetition and (op, pattern), each engine's kvtier pass is followed at once by
 * its fio pass, then the node-fs pass runs, so drift in the machine hits every tool alike. The
 * result per row is the median over repetitions.
 */
import { randomBytes, randomFillSync } from 'node:crypto';
import { accessSync, closeSync, constants, openSync, statSync, unlinkSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { cpus, release, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import {
  createEngine,
  type EngineKind,
  type IoEngine,
  type KvFile,
  KvtierError,
  openFile,
  Region,
} from '../../index.js';
import { abortError, native } from '../../internal.js';
import {
  findFio,
  fioArgs,
  fioVersion,
  runFio,
  type FioLocation,
  type Op,
  type Pattern,
} from './fio.js';
import { runKvtierLoop } from './kvtier-loop.js';
import { openNodeFile, runNodeLoop } from './node-loop.js';
import { median, permutation, sequence } from './stats.js';

export type Peer = 'fio' | 'node-fs';

export interface FileBenchOptions {
  /** Directory the test files go in (default: the OS temp dir). */
  dir?: string;
  /** File size in bytes (default 1 GiB). */
  size?: number;
  /** Block sizes in bytes, one set of rows each (default [1 MiB]). */
  blockSizes?: number[];
  /** Transfers in flight: io_uring ring depth, thread count of the pool, fio iodepth/numjobs. */
  queueDepth?: number;
  /** Engines to measure; default: io_uring where usable, and threads. */
  engines?: EngineKind[];
  /** Repetitions per measurement; the median is reported (default 3). */
  reps?: number;
  /** fio to run: a path, `false` for none; default: `fio` on PATH. */
  fio?: string | false;
  /** fio's buffer type (its --mem option), e.g. `mmaphuge`; fio's default when unset. */
  fioMem?: string;
  /** Run the fs.promises peer (default true). */
  nodeFs?: boolean;
  /** Progress messages (e.g. for a TTY). */
  onProgress?: (message: string) => void;
  /** Things the reader should know before the results, e.g. that fio is missing. */
  onNotice?: (message: string) => void;
  /** Called with each test file's path before it is created, so a caller can remove it on exit. */
  onFile?: (path: string) => void;
  /** Stops the benchmark between passes (and kills a running fio). */
  signal?: AbortSignal;
}

export interface FileBenchRow {
  op: Op;
  pattern: Pattern;
  engine: EngineKind;
  blockSize: number;
  queueDepth: number;
  /** kvtier's median bandwidth in GB/s (1e9 bytes per second). */
  gbps: number;
  peer: Peer;
  peerGbps: number;
  /** gbps / peerGbps. */
  ratio: number;
}

/** One timed pass, as measured. */
export interface FileBenchRun {
  tool: 'kvtier' | Peer;
  op: Op;
  pattern: Pattern;
  /** The kvtier engine (or the engine fio mirrored); absent for node-fs, which has none. */
  engine?: EngineKind;
  blockSize: number;
  rep: number;
  gbps: number;
  /** Wall time of the pass in milliseconds (fio: as fio reports it, whole milliseconds). */
  ms: number;
}

/** kvtier's own median for one measurement, whether or not a peer ran. */
export interface FileBenchResult {
  op: Op;
  pattern: Pattern;
  engine: EngineKind;
  blockSize: number;
  queueDepth: number;
  gbps: number;
}

export interface FileBenchReport {
  rows: FileBenchRow[];
  /** kvtier's medians, one per (op, pattern, engine, block size), peers or not. */
  kvtier: FileBenchResult[];
  file: { dir: string; size: number; direct: boolean; memAlign: number; offsetAlign: number };
  queueDepth: number;
  blockSizes: number[];
  reps: number;
  engines: EngineKind[];
  /** Engines left out by default, and why. */
  skippedEngines?: { engine: EngineKind; reason: string }[];
  /** The fio that ran; `example` is one of its command lines (random reads on the first engine). */
  fio?: { path: string; version: string; mem: string; example: string[] };
  /** Why there are no fio rows. */
  fioMissing?: string;
  nodeFs?: { note: string };
  machine: { cpus: number; kernel: string; node: string; arch: string };
  runs: FileBenchRun[];
}

export const DEFAULTS = {
  size: 2 ** 30,
  blockSize: 2 ** 20,
  queueDepth: 32,
  reps: 3,
} as const;

const PASSES: readonly (readonly [Op, Pattern])[] = [
  ['write', 'seq'],
  ['write', 'rand'],
  ['read', 'seq'],
  ['read', 'rand'],
];

const ALIGN = 4096;
const RANDOM_SEED = 1;

function bad(message: string): KvtierError {
  return new KvtierError('KVTIER_BAD_ARGUMENT', message);
}

function positiveInteger(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw bad(`${what} must be a positive integer, got ${value}`);
  }
}

export interface ResolvedOptions {
  dir: string;
  size: number;
  blockSizes: number[];
  queueDepth: number;
  reps: number;
  engines?: EngineKind[];
}

/** Checks the options; the only thing it writes is an empty probe file in the directory. */
export function validateFileBenchOptions(options: FileBenchOptions): ResolvedOptions {
  const dir = resolve(options.dir ?? tmpdir());
  const size = options.size ?? DEFAULTS.size;
  const blockSizes = options.blockSizes ?? [DEFAULTS.blockSize];
  const queueDepth = options.queueDepth ?? DEFAULTS.queueDepth;
  const reps = options.reps ?? DEFAULTS.reps;
  positiveInteger(size, 'size');
  if (blockSizes.length === 0) throw bad('at least one block size is needed');
  for (const bs of blockSizes) {
    positiveInteger(bs, 'block size');
    if (bs % ALIGN !== 0) {
      throw bad(`block size must be a multiple of ${ALIGN} bytes for O_DIRECT, got ${bs}`);
    }
    if (bs > 2 ** 30) throw bad(`block size must be at most 1GiB, got ${bs}`);
    if (size % bs !== 0) throw bad(`size ${size} is not a multiple of the block size ${bs}`);
  }
  positiveInteger(queueDepth, 'queue depth');
  if (queueDepth > 4096) throw bad(`queue depth must be at most 4096, got ${queueDepth}`);
  positiveInteger(reps, 'reps');
  const engines = options.engines;
  if (engines !== undefined) {
    if (engines.length === 0) throw bad('at least one engine is needed');
    for (const e of engines) {
      if (e !== 'io_uring' && e !== 'threads') {
        throw bad(`engine must be 'io_uring' or 'threads', got '${String(e)}'`);
      }
    }
  }
  let st;
  try {
    st = statSync(dir);
  } catch (e) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `directory ${dir} does not exist`, { cause: e });
  }
  if (!st.isDirectory()) throw bad(`${dir} is not a directory`);
  // access() says yes to root everywhere; creating a file is the test that counts.
  const probe = join(dir, `.kvtier-bench-probe-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    accessSync(dir, constants.W_OK);
    closeSync(openSync(probe, 'wx'));
    unlinkSync(probe);
  } catch (e) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `directory ${dir} is not writable (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
      { cause: e },
    );
  }
  const resolved: ResolvedOptions = {
    dir,
    size,
    blockSizes: [...new Set(blockSizes)],
    queueDepth,
    reps,
  };
  if (engines !== undefined) resolved.engines = [...new Set(engines)];
  return resolved;
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

/** Writes the whole file once through kvtier so every block is allocated and written. */
async function prefill(engine: IoEngine, file: KvFile, size: number): Promise<void> {
  const chunk = Math.min(size, 8 * 2 ** 20);
  const region = Region.allocate(chunk, { pin: false });
  try {
    randomFillSync(new Uint8Array(region.buffer));
    const chunks = Math.floor(size / chunk);
    await runKvtierLoop({
      engine,
      file,
      region,
      op: 'write',
      blockSize: chunk,
      order: sequence(chunks),
    });
    const rest = size - chunks * chunk;
    if (rest > 0) await engine.write(file, chunks * chunk, region, 0, rest);
    await engine.sync(file);
  } finally {
    await region.close();
  }
}

/** Writes the node-fs peer's own file through the page cache and makes it durable. */
async function prefillNode(fh: FileHandle, size: number): Promise<void> {
  const chunk = Buffer.alloc(Math.min(size, 8 * 2 ** 20));
  randomFillSync(chunk);
  for (let at = 0; at < size; at += chunk.length) {
    await fh.write(chunk, 0, Math.min(chunk.length, size - at), at);
  }
  await fh.datasync();
}

function defaultEngines(): {
  engines: EngineKind[];
  skipped: { engine: EngineKind; reason: string }[];
} {
  const uring = native().probe().ioUring;
  if (uring.available) return { engines: ['io_uring', 'threads'], skipped: [] };
  return {
    engines: ['threads'],
    skipped: [{ engine: 'io_uring', reason: uring.reason ?? 'io_uring is not usable' }],
  };
}

/** Runs the benchmark. Test files are removed whatever happens, the caller's signal included. */
export async function runFileBench(options: FileBenchOptions = {}): Promise<FileBenchReport> {
  const opts = validateFileBenchOptions(options);
  const { dir, size, blockSizes, queueDepth, reps } = opts;
  const { signal } = options;
  const progress = options.onProgress ?? (() => {});

  let fio: FioLocation | undefined;
  let fioInfo: FileBenchReport['fio'];
  let fioMissing: string | undefined;
  if (options.fio === false) {
    fioMissing = 'fio was turned off (--no-fio)';
  } else {
    fio = findFio(options.fio);
    if ('missing' in fio) {
      fioMissing = fio.missing;
    } else {
      try {
        fioInfo = {
          path: fio.path,
          version: await fioVersion(fio.path),
          mem: options.fioMem ?? 'default',
          example: [],
        };
      } catch (e) {
        fioMissing = `fio at ${fio.path} does not run: ${(e as Error).message}`;
      }
    }
  }
  const fioPath = fioInfo?.path;
  if (fioMissing !== undefined) {
    const alone = options.nodeFs === false ? 'kvtier alone' : 'kvtier and node-fs only';
    options.onNotice?.(`${fioMissing}; reporting ${alone}`);
  }

  let engineKinds: EngineKind[];
  let skippedEngines: { engine: EngineKind; reason: string }[] = [];
  if (opts.engines) {
    engineKinds = opts.engines;
  } else {
    ({ engines: engineKinds, skipped: skippedEngines } = defaultEngines());
  }

  const tag = `kvtier-bench-${process.pid}-${randomBytes(4).toString('hex')}`;
  const kvPath = join(dir, `${tag}.bin`);
  const nodePath = join(dir, `${tag}-node-fs.bin`);
  const removeFiles = (): void => {
    for (const p of [kvPath, nodePath]) {
      try {
        unlinkSync(p);
      } catch {
        // already gone, or never made
      }
    }
  };

  options.onFile?.(kvPath);
  if (options.nodeFs !== false) options.onFile?.(nodePath);
  const engines = new Map<EngineKind, IoEngine>();
  let file: KvFile | undefined;
  let nodeFile: FileHandle | undefined;
  const runs: FileBenchRun[] = [];
  try {
    for (const kind of engineKinds) engines.set(kind, createEngine({ kind, queueDepth }));
    progress(`preparing ${kvPath}`);
    file = await openFile(kvPath, { create: true, truncate: true, direct: true, size });
    const first = engines.get(engineKinds[0] as EngineKind) as IoEngine;
    await prefill(first, file, size);
    if (options.nodeFs !== false) {
      progress(`preparing ${nodePath}`);
      nodeFile = await openNodeFile(nodePath, true);
      await prefillNode(nodeFile, size);
    }
    throwIfAborted(signal);

    const total = blockSizes.length * reps * PASSES.length;
    let step = 0;
    for (const blockSize of blockSizes) {
      const blocks = size / blockSize;
      const region = Region.allocate(queueDepth * blockSize, { pin: false });
      try {
        randomFillSync(new Uint8Array(region.buffer));
        const orders = {
          seq: sequence(blocks),
          rand: permutation(blocks, RANDOM_SEED),
        };
        for (let rep = 0; rep < reps; rep++) {
          for (const [op, pattern] of PASSES) {
            step++;
            const what = `${op} ${pattern} ${blockSize} B`;
            const order = orders[pattern];
            for (const kind of engineKinds) {
              throwIfAborted(signal);
              progress(`[${step}/${total}] rep ${rep + 1}: ${what}, kvtier ${kind}`);
              const engine = engines.get(kind) as IoEngine;
              const k = await runKvtierLoop({ engine, file, region, op, blockSize, order });
              runs.push({
                tool: 'kvtier',
                op,
                pattern,
                engine: kind,
                blockSize,
                rep,
                gbps: k.gbps,
                ms: k.seconds * 1e3,
              });
              if (fioPath !== undefined) {
                throwIfAborted(signal);
                progress(`[${step}/${total}] rep ${rep + 1}: ${what}, fio (${kind})`);
                const spec = {
                  file: kvPath,
                  op,
                  pattern,
                  engine: kind,
                  blockSize,
                  queueDepth,
                  size,
                };
                const extra = options.fioMem ? [`--mem=${options.fioMem}`] : [];
                const f = await runFio(fioPath, spec, extra, signal);
                runs.push({
                  tool: 'fio',
                  op,
                  pattern,
                  engine: kind,
                  blockSize,
                  rep,
                  gbps: f.gbps,
                  ms: f.runtimeMs,
                });
              }
            }
            if (nodeFile) {
              throwIfAborted(signal);
              progress(`[${step}/${total}] rep ${rep + 1}: ${what}, node-fs`);
              const n = await runNodeLoop(nodeFile, { op, blockSize, queueDepth, order });
              runs.push({
                tool: 'node-fs',
                op,
                pattern,
                blockSize,
                rep,
                gbps: n.gbps,
                ms: n.seconds * 1e3,
              });
              // Untimed: leave no dirty pages whose writeback would land in the next pass.
              if (op === 'write') await nodeFile.datasync();
            }
          }
        }
      } finally {
        await region.close();
      }
    }

    if (fioInfo) {
      const extra = options.fioMem ? [`--mem=${options.fioMem}`] : [];
      fioInfo.example = [
        fioInfo.path,
        ...fioArgs({
          file: kvPath,
          op: 'read',
          pattern: 'rand',
          engine: engineKinds[0] as EngineKind,
          blockSize: blockSizes[0] as number,
          queueDepth,
          size,
        }),
        ...extra,
      ];
    }
    const report: FileBenchReport = {
      ...summarize(runs, engineKinds, blockSizes, queueDepth),
      file: {
        dir,
        size,
        direct: file.direct,
        memAlign: file.memAlign,
        offsetAlign: file.offsetAlign,
      },
      queueDepth,
      blockSizes,
      reps,
      engines: engineKinds,
      machine: {
        cpus: cpus().length,
        kernel: release(),
        node: process.version,
        arch: process.arch,
      },
      runs,
    };
    if (skippedEngines.length > 0) report.skippedEngines = skippedEngines;
    if (fioInfo) report.fio = fioInfo;
    if (fioMissing !== undefined) report.fioMissing = fioMissing;
    if (nodeFile) {
      report.nodeFs = {
        note:
          'fs.promises FileHandle read/write with queue-depth requests in flight, buffered ' +
          '(Node cannot open with O_DIRECT), on its own file so its page cache never touches ' +
          "kvtier's and fio's; its reads may come from the page cache",
      };
    }
    return report;
  } finally {
    await nodeFile?.close().catch(() => {});
    await file?.close().catch(() => {});
    for (const engine of engines.values()) await engine.close().catch(() => {});
    removeFiles();
  }
}

/** Medians per (op, pattern, engine, block size) and per peer, in a stable order. */
export function summarize(
  runs: readonly FileBenchRun[],
  engines: readonly EngineKind[],
  blockSizes: readonly number[],
  queueDepth: number,
): { rows: FileBenchRow[]; kvtier: FileBenchResult[] } {
  const rows: FileBenchRow[] = [];
  const kvtier: FileBenchResult[] = [];
  const pick = (
    tool: FileBenchRun['tool'],
    op: Op,
    pattern: Pattern,
    blockSize: number,
    engine?: EngineKind,
  ): number[] =>
    runs
      .filter(
        (r) =>
          r.tool === tool &&
          r.op === op &&
          r.pattern === pattern &&
          r.blockSize === blockSize &&
          (engine === undefined || r.engine === engine),
      )
      .map((r) => r.gbps);
  for (const blockSize of blockSizes) {
    for (const [op, pattern] of PASSES) {
      for (const engine of engines) {
        const mine = pick('kvtier', op, pattern, blockSize, engine);
        if (mine.length === 0) continue;
        const gbps = median(mine);
        kvtier.push({ op, pattern, engine, blockSize, queueDepth, gbps });
        const peers: [Peer, number[]][] = [
          ['fio', pick('fio', op, pattern, blockSize, engine)],
          ['node-fs', pick('node-fs', op, pattern, blockSize)],
        ];
        for (const [peer, theirs] of peers) {
          if (theirs.length === 0) continue;
          const peerGbps = median(theirs);
          rows.push({
            op,
            pattern,
            engine,
            blockSize,
            queueDepth,
            gbps,
            peer,
            peerGbps,
            ratio: peerGbps > 0 ? gbps / peerGbps : Number.NaN,
          });
        }
      }
    }
  }
  return { rows, kvtier };
}
