/** fio as the file benchmark's peer: find it, build its command line, run it, read its JSON. */
import { spawn } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';

import { type EngineKind, KvtierError } from '../../index.js';

export type Op = 'read' | 'write';
export type Pattern = 'seq' | 'rand';

/** One fio run, described with the same parameters as the kvtier run it is compared with. */
export interface FioSpec {
  file: string;
  op: Op;
  pattern: Pattern;
  /** kvtier's engine; picks the fio ioengine that does the same thing. */
  engine: EngineKind;
  blockSize: number;
  queueDepth: number;
  /** Bytes of the file to cover (the whole file, a multiple of blockSize). */
  size: number;
}

export interface FioResult {
  /** Bytes moved, over all jobs. */
  ioBytes: number;
  /** Run time in milliseconds as fio reports it (the longest job's, with group_reporting). */
  runtimeMs: number;
  /** Bandwidth in bytes per second as fio reports it. */
  bwBytes: number;
  /** Bandwidth in GB/s (1e9 bytes per second). */
  gbps: number;
}

/** Where fio is, or why it cannot be used. */
export type FioLocation = { path: string } | { missing: string };

function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Finds fio: `explicit` when given, otherwise the first `fio` on PATH. */
export function findFio(explicit?: string, pathEnv = process.env.PATH ?? ''): FioLocation {
  if (explicit !== undefined) {
    return isExecutableFile(explicit)
      ? { path: explicit }
      : { missing: `${explicit} is not an executable file` };
  }
  for (const dir of pathEnv.split(delimiter)) {
    if (dir.length === 0) continue;
    const candidate = join(dir, 'fio');
    if (isExecutableFile(candidate)) return { path: candidate };
  }
  return { missing: 'fio was not found on PATH (install it, e.g. apt-get install fio)' };
}

/**
 * fio's command line for the same work kvtier does.
 * - io_uring: one job, ioengine=io_uring, iodepth = queue depth.
 * - threads (kvtier's pool has queue-depth threads each doing blocking pread/pwrite): ioengine=psync
 *   with numjobs = queue depth threads. Sequential splits the file between jobs with
 *   offset_increment; random gives each job an equal share of I/O over the whole file.
 */
export function fioArgs(spec: FioSpec): string[] {
  const { file, op, pattern, engine, blockSize, queueDepth, size } = spec;
  const rw = pattern === 'seq' ? op : `rand${op}`;
  const args = [
    '--name=kvtier-peer',
    `--filename=${file}`,
    '--direct=1',
    `--rw=${rw}`,
    `--bs=${blockSize}`,
    '--allow_file_create=0',
    '--output-format=json',
  ];
  if (engine === 'io_uring') {
    args.push('--ioengine=io_uring', `--iodepth=${queueDepth}`, `--size=${size}`);
    return args;
  }
  const blocks = Math.floor(size / blockSize);
  const jobs = Math.max(1, Math.min(queueDepth, blocks));
  const perJob = Math.floor(blocks / jobs) * blockSize;
  args.push(
    '--ioengine=psync',
    '--iodepth=1',
    '--thread',
    `--numjobs=${jobs}`,
    '--group_reporting',
  );
  if (pattern === 'seq') {
    args.push(`--size=${perJob}`, `--offset_increment=${perJob}`);
  } else {
    args.push(`--size=${size}`, `--io_size=${perJob}`);
  }
  return args;
}

interface FioJsonSide {
  io_bytes?: number;
  bw_bytes?: number;
  runtime?: number;
}

interface FioJsonJob {
  jobname?: string;
  error?: number;
  read?: FioJsonSide;
  write?: FioJsonSide;
}

/** Reads fio's `--output-format=json` output (which fio may precede with notices). */
export function parseFioJson(text: string, op: Op): FioResult {
  const start = text.indexOf('{');
  const end = text.lastIndexOf('}');
  if (start < 0 || end < start) {
    throw new KvtierError('KVTIER_IO', `fio printed no JSON: ${text.trim().slice(0, 300)}`);
  }
  let doc: { jobs?: FioJsonJob[] };
  try {
    doc = JSON.parse(text.slice(start, end + 1)) as { jobs?: FioJsonJob[] };
  } catch (e) {
    throw new KvtierError(
      'KVTIER_IO',
      `fio printed JSON that does not parse: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
  const jobs = doc.jobs ?? [];
  if (jobs.length === 0) throw new KvtierError('KVTIER_IO', 'fio reported no jobs');
  let ioBytes = 0;
  let runtimeMs = 0;
  let bwBytes = 0;
  for (const job of jobs) {
    if (job.error) {
      throw new KvtierError(
        'KVTIER_IO',
        `fio job ${job.jobname ?? ''} failed with error ${job.error}`,
      );
    }
    const side = job[op];
    if (!side || typeof side.io_bytes !== 'number' || typeof side.runtime !== 'number') {
      throw new KvtierError('KVTIER_IO', `fio reported no ${op} statistics`);
    }
    ioBytes += side.io_bytes;
    runtimeMs = Math.max(runtimeMs, side.runtime);
    bwBytes += side.bw_bytes ?? 0;
  }
  if (ioBytes === 0 || runtimeMs <= 0) {
    throw new KvtierError('KVTIER_IO', `fio moved ${ioBytes} bytes in ${runtimeMs} ms`);
  }
  // Without group_reporting each job has its own line; their bandwidths add up.
  if (bwBytes === 0) bwBytes = (ioBytes * 1000) / runtimeMs;
  return { ioBytes, runtimeMs, bwBytes, gbps: bwBytes / 1e9 };
}

/** Runs a program and collects its output; rejects when it cannot start or exits non-zero. */
function runProgram(
  path: string,
  args: string[],
  signal?: AbortSignal,
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(path, args, { stdio: ['ignore', 'pipe', 'pipe'], signal });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      reject(new KvtierError('KVTIER_IO', `cannot run ${path}: ${e.message}`, { cause: e }));
    });
    child.on('close', (code, sig) => {
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (code === 0) {
        resolve({ stdout, stderr });
        return;
      }
      const why = sig ? `was killed by ${sig}` : `exited with status ${code}`;
      reject(
        new KvtierError('KVTIER_IO', `${path} ${why}: ${(stderr || stdout).trim().slice(0, 500)}`),
      );
    });
  });
}

/** fio's version string, e.g. `fio-3.33`. */
export async function fioVersion(path: string): Promise<string> {
  return (await runProgram(path, ['--version'])).stdout.trim();
}

/** Runs fio for `spec`; `extraArgs` go after kvtier's own (e.g. `--mem=mmaphuge`). */
export async function runFio(
  path: string,
  spec: FioSpec,
  extraArgs: readonly string[] = [],
  signal?: AbortSignal,
): Promise<FioResult> {
  const { stdout } = await runProgram(path, [...fioArgs(spec), ...extraArgs], signal);
  return parseFioJson(stdout, spec.op);
}
