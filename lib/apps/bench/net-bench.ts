/**
 * `kvtier bench net`: put and get through a kvtier peer over TCP next to iperf3's single stream on
 * the same path, in the same run, alternating, medians of several repetitions. Without --peer it
 * starts `kvtier serve` on loopback itself (a second process, as a real peer would be).
 */
import { cliPath } from '../cli-path.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { accessSync, constants, statSync } from 'node:fs';
import { randomBytes, randomFillSync } from 'node:crypto';
import { createServer } from 'node:net';

import { connect, KvtierError, type PeerClient, Region } from '../../index.js';
import { LANDING_BYTES, parseAddress } from '../../internal.js';
import { checkRoom, fittedSizes, noRoom, passSizes } from './net-fit.js';
import { median } from './stats.js';
import { formatSize } from '../sizes.js';

export interface NetBenchOptions {
  /** HOST:PORT of a running `kvtier serve`; without it a server is started on loopback. */
  peer?: string;
  tokenFile?: string;
  blockSize: number;
  inflight: number;
  /** Bytes moved per timed pass at blockSize. */
  bytes: number;
  /**
   * `bytes` was asked for: a peer that cannot hold such passes stops the run before anything is
   * timed. Otherwise the passes are made smaller to fit it (reported as `fitted`).
   */
  fixedBytes?: boolean;
  /** Block size of the operations-per-second rows. */
  smallBlockSize: number;
  /** Operations per timed pass at smallBlockSize. */
  smallOps: number;
  reps: number;
  /** iperf3 to run (default: on PATH), or false. */
  iperf3?: string | false;
  /** Seconds per iperf3 run; undefined: each run moves the bytes of one timed pass instead. */
  iperfSeconds?: number;
  onProgress?: (message: string) => void;
  signal?: AbortSignal;
}

export const NET_DEFAULTS = {
  blockSize: 1 << 20,
  inflight: 8,
  // About a second a pass on loopback: short passes measured the start of a pass (fresh slots
  // touched for the first time, claims) more than its steady rate.
  bytes: 2 * 2 ** 30,
  smallBlockSize: 64 << 10,
  smallOps: 8192,
  reps: 3,
  iperfSeconds: 3,
};

export interface NetRow {
  op: 'get' | 'put';
  blockSize: number;
  inflight: number;
  gbps: number;
  opsPerSec: number;
  p50Us: number;
  p99Us: number;
  peer: 'iperf3' | null;
  peerGbps: number | null;
  ratio: number | null;
  /** GB/s of each repetition, in order. */
  runs: number[];
  /** Bytes each repetition's timed pass moved, as the peer acknowledged them (found or stored). */
  bytes: number[];
}

export interface NetBenchReport {
  peer: string;
  startedServer: boolean;
  transport: string;
  transportReason: string;
  iperf3: { path: string; gbps: number; runs: number[] } | { missing: string };
  reps: number;
  rows: NetRow[];
  /**
   * Present when the peer could not hold the passes --bytes asked for by default, and they were
   * sized to what it held: the bytes asked for, the bytes of each pass, and the blocks it held.
   */
  fitted?: { requestedBytes: number; bytes: number; peerBlocks: number };
}

const CLI = cliPath;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Starts `kvtier serve` on loopback with a fresh secret; resolves once it listens. */
async function startServer(
  blockSize: number,
  hostBytes: number,
): Promise<{ url: string; tokenFile: string; child: ChildProcess; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'kvtier-bench-net-'));
  const tokenFile = join(dir, 'token');
  await writeFile(tokenFile, randomBytes(32).toString('hex'), { mode: 0o600 });
  const child = spawn(
    process.execPath,
    [
      CLI,
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--host-bytes',
      String(hostBytes),
      '--block-bytes',
      String(blockSize),
      '--token-file',
      tokenFile,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.includes('"listening"'));
      if (line) resolve((JSON.parse(line) as { port: number }).port);
    });
    child.once('exit', (code) => reject(new Error(`kvtier serve exited with ${code}: ${err}`)));
  });
  child.stdout.resume();
  return { url: `127.0.0.1:${port}`, tokenFile, child, dir };
}

/** One iperf3 client run: `{ seconds }` long, or moving `{ bytes }`. */
function iperfOnce(path: string, run: { seconds: number } | { bytes: number }): Promise<number> {
  const length = 'seconds' in run ? ['-t', String(run.seconds)] : ['-n', String(run.bytes)];
  return freePort().then(
    (port) =>
      new Promise<number>((resolve, reject) => {
        const server = spawn(path, ['-s', '-1', '-p', String(port)], { stdio: 'ignore' });
        // The server needs a moment to listen; the client retries until it connects.
        const attempt = (left: number): void => {
          const client = spawn(path, ['-c', '127.0.0.1', '-p', String(port), ...length, '-J'], {
            stdio: ['ignore', 'pipe', 'pipe'],
          });
          let out = '';
          client.stdout.on('data', (d: Buffer) => (out += d.toString()));
          client.on('exit', (code) => {
            if (code !== 0 && left > 0) {
              setTimeout(() => attempt(left - 1), 100);
              return;
            }
            server.kill();
            try {
              const j = JSON.parse(out) as {
                end?: { sum_received?: { bits_per_second?: number } };
                error?: string;
              };
              const bps = j.end?.sum_received?.bits_per_second;
              if (bps === undefined) throw new Error(j.error ?? 'no result');
              resolve(bps / 8 / 1e9);
            } catch (e) {
              reject(new Error(`iperf3 failed: ${(e as Error).message}`));
            }
          });
        };
        setTimeout(() => attempt(20), 100);
      }),
  );
}

/** iperf3: `explicit` when given, else the first on PATH. */
export function findIperf(
  explicit: string | false | undefined,
  pathEnv = process.env.PATH ?? '',
): { path: string } | { missing: string } {
  if (explicit === false) return { missing: 'iperf3 was turned off (--no-iperf3)' };
  const candidates =
    explicit !== undefined
      ? [explicit]
      : pathEnv
          .split(delimiter)
          .filter(Boolean)
          .map((d) => join(d, 'iperf3'));
  for (const c of candidates) {
    try {
      if (statSync(c).isFile()) {
        accessSync(c, constants.X_OK);
        return { path: c };
      }
    } catch {
      // not this one
    }
  }
  return {
    missing:
      explicit !== undefined
        ? `${explicit} is not an executable file`
        : 'iperf3 was not found on PATH (install it, e.g. apt-get install iperf3)',
  };
}

/** Runs `ops` operations of `op` with `inflight` at once; returns seconds and latencies (us). */
async function pass(
  client: PeerClient,
  op: 'get' | 'put',
  keys: string[],
  ops: number,
  inflight: number,
  buffers: Region,
  blockSize: number,
): Promise<{ seconds: number; latencies: number[]; bytes: number }> {
  const latencies: number[] = [];
  let bytes = 0;
  let next = 0;
  const start = process.hrtime.bigint();
  const worker = async (slot: number): Promise<void> => {
    const view = buffers.view(slot * blockSize, blockSize);
    while (next < ops) {
      const i = next++;
      const key = keys[i % keys.length]!;
      const t0 = process.hrtime.bigint();
      if (op === 'get') {
        const r = await client.get([key], view);
        if (r.count !== 1) throw new KvtierError('KVTIER_PEER', `block ${i} was not found`);
        bytes += blockSize;
      } else {
        const r = await client.put([key], view);
        if (r.stored + r.present !== 1) {
          throw new KvtierError('KVTIER_PEER', `block ${i} was not stored`);
        }
        bytes += blockSize;
      }
      latencies.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
  };
  await Promise.all(Array.from({ length: inflight }, (_, k) => worker(k)));
  return { seconds: Number(process.hrtime.bigint() - start) / 1e9, latencies, bytes };
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export async function runNetBench(options: NetBenchOptions): Promise<NetBenchReport> {
  const { blockSize, inflight, reps } = options;
  const iperf = findIperf(options.iperf3);
  // A running peer has one block size: --block-size must match it, and only it is measured.
  const sizes = options.peer !== undefined ? [blockSize] : [blockSize, options.smallBlockSize];
  const servers: Awaited<ReturnType<typeof startServer>>[] = [];
  const rows: NetRow[] = [];
  const iperfRuns: number[] = [];
  let transport = 'tcp';
  let transportReason = '';
  let peerName = options.peer ?? '';
  let fitted: NetBenchReport['fitted'];
  try {
    for (const bs of sizes) {
      let url: string;
      let tokenFile: string;
      if (options.peer !== undefined) {
        parseAddress(options.peer);
        if (options.tokenFile === undefined) {
          throw new KvtierError('KVTIER_BAD_ARGUMENT', '--peer needs --token-file');
        }
        url = options.peer;
        tokenFile = options.tokenFile;
      } else {
        const working = bs === blockSize ? Math.min(options.bytes, 256 << 20) : 4096 * bs;
        const passBytes = bs === blockSize ? options.bytes : options.smallOps * bs;
        // Room for every block of a pass and the server's landing slots: nothing is evicted.
        const s = await startServer(bs, working + passBytes + 4 * inflight * bs + LANDING_BYTES);
        servers.push(s);
        url = s.url;
        tokenFile = s.tokenFile;
        peerName = `kvtier serve on ${s.url} (started by the benchmark)`;
      }
      const client = await connect(url, {
        tokenFile,
        blockBytes: bs,
        timeoutMs: 120_000,
      });
      transport = client.transport;
      transportReason = client.transportReason;
      const buffers = Region.allocate(inflight * bs);
      try {
        randomFillSync(new Uint8Array(buffers.buffer));
        const salt = randomBytes(8).toString('hex');
        // Hex keys: the salt keeps runs against a long-lived peer apart, the round the put passes.
        const keyOf = (i: number, round: number): string =>
          `${salt}${round.toString(16).padStart(8, '0')}${i.toString(16).padStart(16, '0')}`.padEnd(
            64,
            '0',
          );
        const keysOf = (n: number, round: number): string[] =>
          Array.from({ length: n }, (_, i) => keyOf(i, round));
        let { ops, distinct } =
          bs === blockSize
            ? passSizes(options.bytes, bs, inflight)
            : { ops: options.smallOps, distinct: 4096 };
        // Before anything is timed: the get set and a put pass stored as the passes will, untimed
        // (this is also the put warm-up: the server's memory is touched once, as a running
        // server's is). A peer that cannot hold them stops the run here, or, when the pass size
        // was not asked for, gets passes sized to what it held.
        options.onProgress?.(`warming up at ${bs} B, checking the peer holds the passes`);
        const room = await checkRoom(
          client,
          keysOf(distinct, 0),
          keysOf(ops, 0xffff),
          inflight,
          buffers,
        );
        if (!room.fits) {
          const fit = fittedSizes(room.held, bs, inflight);
          const want = { ops, distinct };
          if (options.fixedBytes || bs !== blockSize || !fit) {
            throw noRoom(url, room.held, want, bs, inflight);
          }
          ({ ops, distinct } = fit);
          options.onProgress?.(`passes sized to what the peer held: ${ops} blocks`);
          const again = await checkRoom(
            client,
            keysOf(distinct, 0),
            keysOf(ops, 0xffff),
            inflight,
            buffers,
          );
          if (!again.fits) throw noRoom(url, again.held, fit, bs, inflight);
          fitted = { requestedBytes: options.bytes, bytes: ops * bs, peerBlocks: room.held };
        }
        // The get working set, stored once (by checkRoom).
        const getKeys = keysOf(distinct, 0);
        const results: Record<
          'get' | 'put',
          { gbps: number[]; lat: number[]; ops: number[]; bytes: number[] }
        > = {
          get: { gbps: [], lat: [], ops: [], bytes: [] },
          put: { gbps: [], lat: [], ops: [], bytes: [] },
        };
        // Every put stores a new block (no key repeats within a pass), and its pass's keys are
        // deleted afterwards, untimed, so the server's host tier never evicts the get set.
        const putPass = async (
          round: number,
        ): Promise<{ seconds: number; latencies: number[]; bytes: number }> => {
          const keys = Array.from({ length: ops }, (_, i) => keyOf(i, round));
          const r = await pass(client, 'put', keys, ops, inflight, buffers, bs);
          for (let i = 0; i < keys.length; i += 256) await client.delete(keys.slice(i, i + 256));
          return r;
        };
        await pass(client, 'get', getKeys, Math.min(ops, distinct), inflight, buffers, bs);
        const ratios: Record<'get' | 'put', number[]> = { get: [], put: [] };
        for (let rep = 0; rep < reps; rep++) {
          if (options.signal?.aborted) throw options.signal.reason;
          const repGbps: Record<'get' | 'put', number> = { get: 0, put: 0 };
          for (const op of ['get', 'put'] as const) {
            options.onProgress?.(`${op} ${bs} B x${inflight}, repetition ${rep + 1} of ${reps}`);
            const r =
              op === 'get'
                ? await pass(client, 'get', getKeys, ops, inflight, buffers, bs)
                : await putPass(rep + 1);
            repGbps[op] = r.bytes / r.seconds / 1e9;
            results[op].bytes.push(r.bytes);
            results[op].gbps.push(repGbps[op]);
            results[op].ops.push(ops / r.seconds);
            results[op].lat.push(...r.latencies);
          }
          if ('path' in iperf && bs === blockSize) {
            options.onProgress?.(`iperf3, repetition ${rep + 1} of ${reps}`);
            const peer = await iperfOnce(
              iperf.path,
              options.iperfSeconds !== undefined
                ? { seconds: options.iperfSeconds }
                : { bytes: ops * bs },
            );
            iperfRuns.push(peer);
            // Each repetition's passes against the iperf3 run right after them: on a shared
            // machine the load drifts between repetitions more than within one.
            ratios.get.push(repGbps.get / peer);
            ratios.put.push(repGbps.put / peer);
          }
        }
        const peerGbps = iperfRuns.length > 0 ? median(iperfRuns) : null;
        for (const op of ['get', 'put'] as const) {
          const lat = results[op].lat.sort((a, b) => a - b);
          const gbps = median([...results[op].gbps]);
          rows.push({
            op,
            blockSize: bs,
            inflight,
            gbps,
            opsPerSec: median(results[op].ops),
            p50Us: percentile(lat, 50),
            p99Us: percentile(lat, 99),
            runs: results[op].gbps.slice(),
            bytes: results[op].bytes.slice(),
            peer: peerGbps === null ? null : 'iperf3',
            peerGbps,
            ratio:
              ratios[op].length > 0
                ? median(ratios[op])
                : peerGbps === null
                  ? null
                  : gbps / peerGbps,
          });
        }
        // A long-lived peer is left with what it held before: the next run finds the same room.
        for (let i = 0; i < getKeys.length; i += 256)
          await client.delete(getKeys.slice(i, i + 256));
      } finally {
        await client.close();
        await buffers.close();
      }
    }
  } finally {
    for (const s of servers) {
      s.child.kill('SIGTERM');
      await new Promise((r) => s.child.once('exit', r));
      await rm(s.dir, { recursive: true, force: true });
    }
  }
  return {
    peer: peerName,
    startedServer: options.peer === undefined,
    transport,
    transportReason,
    iperf3:
      'path' in iperf && iperfRuns.length > 0
        ? { path: iperf.path, gbps: median(iperfRuns), runs: iperfRuns }
        : 'missing' in iperf
          ? iperf
          : { missing: 'iperf3 did not run' },
    reps,
    rows,
    ...(fitted ? { fitted } : {}),
  };
}

export function netBenchJson(report: NetBenchReport): string {
  return `${JSON.stringify(report, null, 2)}\n`;
}

export function formatNetBench(report: NetBenchReport): string {
  const lines: string[] = [];
  lines.push(`peer: ${report.peer}`);
  if (report.fitted) {
    const f = report.fitted;
    lines.push(
      `passes sized to fit the peer: ${formatSize(f.bytes)} each, not ${formatSize(f.requestedBytes)} ` +
        `(it held ${f.peerBlocks} blocks of this run at once; --bytes chooses)`,
    );
  }
  lines.push(`transport: ${report.transport} (${report.transportReason})`);
  if ('gbps' in report.iperf3) {
    lines.push(
      `iperf3 single stream: ${report.iperf3.gbps.toFixed(2)} GB/s (median of ${report.iperf3.runs.length})`,
    );
  } else {
    lines.push(`iperf3: not run (${report.iperf3.missing})`);
  }
  lines.push('');
  lines.push(
    'op    block     in flight  GB/s    ops/s      p50 us    p99 us    iperf3 GB/s  ratio',
  );
  for (const r of report.rows) {
    lines.push(
      [
        r.op.padEnd(5),
        `${r.blockSize >= 1 << 20 ? `${r.blockSize / (1 << 20)} MiB` : `${r.blockSize / 1024} KiB`}`.padEnd(
          9,
        ),
        String(r.inflight).padEnd(10),
        r.gbps.toFixed(2).padEnd(7),
        Math.round(r.opsPerSec).toLocaleString('en-US').padEnd(10),
        r.p50Us.toFixed(0).padEnd(9),
        r.p99Us.toFixed(0).padEnd(9),
        (r.peerGbps === null ? '-' : r.peerGbps.toFixed(2)).padEnd(12),
        r.ratio === null ? '-' : r.ratio.toFixed(2),
      ].join(' '),
    );
  }
  return `${lines.join('\n')}\n`;
}
