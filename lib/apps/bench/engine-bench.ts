/**
 * `kvtier bench engine`: blocks saved and loaded through the engine channel of a `kvtier serve`
 * child (an engine's host pool shared by descriptor; the server gathers, checksums and stores,
 * then reads, verifies and scatters), next to the in-process Warehouse put and get of the same
 * blocks with the same tier, batch and calls in flight, in the same run. Passes alternate in
 * order from one repetition to the next; medians are reported.
 */
import { cliPath } from '../cli-path.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  describeKvLayout,
  type KvLayoutSpec,
  KvtierError,
  planKvCopy,
  Warehouse,
} from '../../index.js';
import { EngineClient, HostPoolFile } from '../../internal.js';
import { formatSize } from '../sizes.js';
import { median } from './stats.js';

/** Channel / in-process Warehouse, at least (issue 14, host path). */
export const ENGINE_TARGET = 0.9;

export type EngineBenchForm = 'block-major' | 'kv-first';

export interface EngineBenchOptions {
  /** Blocks per pass (default 256). */
  blocks?: number;
  /** Keys per save/load and put/get call (default 32). */
  batch?: number;
  /** Calls in flight at once (default 2). */
  inFlight?: number;
  /** Repetitions; medians are reported (default 5). */
  reps?: number;
  /** Pool layouts to run (default both). */
  forms?: EngineBenchForm[];
  /** Layers of the model whose blocks move (default 8: 512 KiB blocks). */
  numLayers?: number;
  onProgress?: (message: string) => void;
}

export const ENGINE_DEFAULTS = { blocks: 256, batch: 32, inFlight: 2, reps: 5, numLayers: 8 };
const SHAPE = { blockTokens: 16, kvHeads: 8, headDim: 128, dtype: 'bf16' } as const;

export interface Rate {
  seconds: number;
  blocksPerSec: number;
  GBps: number;
  /**
   * CPU time of every thread on that side (client and server for the channel) per GB moved:
   * what the path costs, which a machine busy with other work changes far less than wall time.
   */
  cpuSecondsPerGB: number;
}

export interface EngineBenchRow {
  form: EngineBenchForm;
  op: 'save' | 'load';
  blockBytes: number;
  blocks: number;
  batch: number;
  inFlight: number;
  channel: Rate;
  warehouse: Rate;
  /** channel / warehouse throughput. */
  ratio: number;
  /** warehouse / channel CPU time per GB (1 means the channel costs no more CPU). */
  cpuRatio: number;
  /** Whether every block loaded in the first repetition matched its source, byte for byte. */
  verified: boolean;
}

export interface EngineBenchReport {
  kind: 'engine';
  target: number;
  machine: { cpus: number; kernel: string; node: string };
  options: Required<Omit<EngineBenchOptions, 'onProgress'>>;
  rows: EngineBenchRow[];
}

const CLI = cliPath;

function layoutOf(form: EngineBenchForm, numLayers: number, numBlocks: number): KvLayoutSpec {
  if (form === 'block-major') {
    return {
      form: 'stacked',
      ...SHAPE,
      numLayers,
      numBlocks,
      order: ['block', 'layer', 'kv', 'token', 'head', 'dim'],
      tensor: { offset: 0 },
    };
  }
  const layer = 2 * numBlocks * SHAPE.blockTokens * SHAPE.kvHeads * SHAPE.headDim * 2;
  return {
    form: 'kv-first',
    ...SHAPE,
    numLayers,
    numBlocks,
    layers: Array.from({ length: numLayers }, (_, l) => ({ offset: l * layer })),
  };
}

async function startServer(
  socket: string,
  blockBytes: number,
  hostBytes: number,
): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    [
      CLI,
      'serve',
      '--engine-socket',
      socket,
      '--block-bytes',
      String(blockBytes),
      '--host-bytes',
      String(hostBytes),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  await new Promise<void>((resolve, reject) => {
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('"listening"')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`kvtier serve exited with ${code}: ${err}`)));
  });
  child.stdout.resume();
  return child;
}

/** Whether engine block n + j holds the bytes of block j, piece by piece, for every j < n. */
function loadedMatch(pool: HostPoolFile, spec: KvLayoutSpec, n: number): boolean {
  const plan = planKvCopy(describeKvLayout(spec));
  const v = pool.view();
  for (let j = 0; j < n; j++) {
    const a = plan.segments(j);
    const b = plan.segments(j + n);
    for (let i = 0; i < a.length; i++) {
      const x = a[i]!;
      const y = b[i]!;
      const src = v.subarray(x.poolOffset, x.poolOffset + x.length);
      if (Buffer.compare(src, v.subarray(y.poolOffset, y.poolOffset + y.length)) !== 0)
        return false;
    }
  }
  return true;
}

function keysFor(tag: string, n: number): Buffer[] {
  return Array.from({ length: n }, (_, i) => createHash('sha256').update(`${tag}/${i}`).digest());
}

/** CPU nanoseconds the threads of process `pid` have run (from the scheduler's own counts). */
function cpuNs(pid: number | 'self'): number {
  let sum = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      sum += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // a thread that ended between the listing and the read
    }
  }
  return sum;
}

interface Pass {
  seconds: number;
  cpuSeconds: number;
}

/**
 * Runs `calls` batch calls, `inFlight` workers taking the next call in turn (worker w owns lane
 * w of any shared buffer); the wall and CPU seconds they took.
 */
async function timed(
  calls: number,
  inFlight: number,
  pids: (number | 'self')[],
  call: (i: number, worker: number) => Promise<void>,
): Promise<Pass> {
  let next = 0;
  const cpu = (): number => pids.reduce<number>((s, p) => s + cpuNs(p), 0);
  const c0 = cpu();
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: Math.min(inFlight, calls) }, async (_, w) => {
      while (next < calls) await call(next++, w);
    }),
  );
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { seconds, cpuSeconds: (cpu() - c0) / 1e9 };
}

function rate(passes: Pass[], blocks: number, blockBytes: number): Rate {
  const seconds = median(passes.map((p) => p.seconds));
  const gb = (blocks * blockBytes) / 1e9;
  return {
    seconds,
    blocksPerSec: blocks / seconds,
    GBps: gb / seconds,
    cpuSecondsPerGB: median(passes.map((p) => p.cpuSeconds)) / gb,
  };
}

export async function runEngineBench(options: EngineBenchOptions = {}): Promise<EngineBenchReport> {
  const o = {
    ...ENGINE_DEFAULTS,
    forms: ['block-major', 'kv-first'] as EngineBenchForm[],
    ...options,
  };
  for (const [k, v] of Object.entries({
    blocks: o.blocks,
    batch: o.batch,
    inFlight: o.inFlight,
    reps: o.reps,
    numLayers: o.numLayers,
  })) {
    if (!Number.isSafeInteger(v) || v < 1) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', `${k} must be a positive integer, got ${v}`);
    }
  }
  const n = o.blocks;
  const batch = o.batch;
  const calls = Math.ceil(n / batch);
  const rows: EngineBenchRow[] = [];
  const dir = await mkdtemp(join(tmpdir(), 'kvtier-bench-engine-'));
  const socket = join(dir, 'engine.sock');
  for (const form of o.forms) {
    const spec = layoutOf(form, o.numLayers, 2 * n);
    const layout = describeKvLayout(spec);
    const bs = layout.blockBytes;
    // Room for two passes, and each repetition's blocks are evicted (untimed) before the next:
    // no pass pays for evictions, and after the warm-up none pays for first-touch page faults.
    const hostBytes = 2 * n * bs;
    const server = await startServer(socket, bs, hostBytes);
    const wh = await Warehouse.open({
      blockBytes: bs,
      tiers: [{ kind: 'host', bytes: hostBytes }],
    });
    const pool = HostPoolFile.create(layout.extent);
    const client = await EngineClient.connect(socket, { name: 'bench' });
    // The in-process side moves the same blocks between the Warehouse and the same kind of
    // memory (shared pages, as the engine's pool): a block-major pool is already packed, so put
    // reads the pool and get writes it in place, as an in-process engine would; for kv-first it
    // puts from (and gets into) packed copies in shared memory, so the channel's gather and
    // scatter are its own cost.
    const packedInPool = form === 'block-major';
    const packed = packedInPool ? undefined : HostPoolFile.create(n * bs);
    const landing = packedInPool ? undefined : HostPoolFile.create(batch * bs * o.inFlight);
    const putFrom = (b: number, len: number): Uint8Array =>
      packedInPool ? pool.view(b * bs, len * bs) : packed!.view(b * bs, len * bs);
    const getInto = (b: number, len: number, w: number): Uint8Array =>
      packedInPool ? pool.view((n + b) * bs, len * bs) : landing!.view(w * batch * bs, len * bs);
    try {
      // Random bytes everywhere, so every page of the pool exists before anything is timed.
      const src = pool.view(0, layout.extent);
      for (let at = 0; at < src.length; at += 1 << 24) {
        randomFillSync(src.subarray(at, Math.min(src.length, at + (1 << 24))));
      }
      landing?.view().fill(1);
      packed?.view().set(src.subarray(0, n * bs));
      await client.registerHostPool(pool, spec, 'kv');
      const ids = (c: number) =>
        Array.from({ length: Math.min(batch, n - c * batch) }, (_, j) => c * batch + j);
      const saveTimes: Pass[] = [];
      const loadTimes: Pass[] = [];
      const putTimes: Pass[] = [];
      const getTimes: Pass[] = [];
      const both: (number | 'self')[] = ['self', server.pid!];
      let verified = true;
      for (let r = -1; r < o.reps; r++) {
        o.onProgress?.(r < 0 ? `${form}: warm-up` : `${form}: repetition ${r + 1} of ${o.reps}`);
        const ck = keysFor(`channel/${form}/${r}`, n);
        const wk = keysFor(`warehouse/${form}/${r}`, n).map((k) => k.toString('hex'));
        const channel = async () => {
          saveTimes.push(
            await timed(calls, o.inFlight, both, async (c) => {
              const b = ids(c);
              const s = await client.save('kv', ck.slice(b[0], b[0]! + b.length), b);
              if (s.stored !== b.length)
                throw new KvtierError('KVTIER_IO', `save stored ${s.stored} of ${b.length}`);
            }),
          );
          loadTimes.push(
            await timed(calls, o.inFlight, both, async (c) => {
              const b = ids(c);
              const l = await client.load(
                'kv',
                ck.slice(b[0], b[0]! + b.length),
                b.map((x) => x + n),
              );
              if (l.prefix !== b.length)
                throw new KvtierError('KVTIER_IO', `load found ${l.prefix} of ${b.length}`);
            }),
          );
        };
        const inProcess = async () => {
          putTimes.push(
            await timed(calls, o.inFlight, ['self'], async (c) => {
              const b = ids(c);
              const res = await wh.put(wk.slice(b[0], b[0]! + b.length), putFrom(b[0]!, b.length));
              if (res.stored !== b.length)
                throw new KvtierError('KVTIER_IO', `put stored ${res.stored} of ${b.length}`);
            }),
          );
          getTimes.push(
            await timed(calls, o.inFlight, ['self'], async (c, w) => {
              const b = ids(c);
              const got = await wh.get(
                wk.slice(b[0], b[0]! + b.length),
                getInto(b[0]!, b.length, w),
              );
              if (got.prefix !== b.length)
                throw new KvtierError('KVTIER_IO', `get found ${got.prefix} of ${b.length}`);
            }),
          );
        };
        if (r % 2 === 0) {
          await channel();
          await inProcess();
        } else {
          await inProcess();
          await channel();
        }
        if (r < 0) {
          for (const t of [saveTimes, loadTimes, putTimes, getTimes]) t.length = 0;
        }
        await client.evict(ck);
        await wh.evict(wk);
        if (r === 0) verified = loadedMatch(pool, spec, n);
      }
      const row = (op: 'save' | 'load', ch: Pass[], wt: Pass[]): EngineBenchRow => {
        const channel = rate(ch, n, bs);
        const warehouse = rate(wt, n, bs);
        return {
          form,
          op,
          blockBytes: bs,
          blocks: n,
          batch,
          inFlight: o.inFlight,
          channel,
          warehouse,
          ratio: channel.GBps / warehouse.GBps,
          cpuRatio: warehouse.cpuSecondsPerGB / channel.cpuSecondsPerGB,
          verified,
        };
      };
      rows.push(row('save', saveTimes, putTimes), row('load', loadTimes, getTimes));
    } finally {
      client.close();
      await pool.close();
      await packed?.close();
      await landing?.close();
      await wh.close();
      server.kill('SIGTERM');
      await new Promise((r) => server.once('exit', r));
    }
  }
  await rm(dir, { recursive: true, force: true });
  return {
    kind: 'engine',
    target: ENGINE_TARGET,
    machine: { cpus: cpus().length, kernel: release(), node: process.version },
    options: {
      blocks: o.blocks,
      batch: o.batch,
      inFlight: o.inFlight,
      reps: o.reps,
      forms: o.forms,
      numLayers: o.numLayers,
    },
    rows,
  };
}

export function engineBenchJson(report: EngineBenchReport): string {
  return `${JSON.stringify(report, null, 2)}\n`;
}

export function formatEngineBench(report: EngineBenchReport): string {
  const lines = [
    `engine channel vs in-process Warehouse (host tier), target ratio >= ${report.target}`,
    `machine: ${report.machine.cpus} cpus, linux ${report.machine.kernel}, node ${report.machine.node}`,
  ];
  for (const r of report.rows) {
    lines.push(
      `${r.form.padEnd(12)} ${r.op.padEnd(5)} ${formatSize(r.blockBytes)} blocks x${r.batch}: ` +
        `channel ${r.channel.blocksPerSec.toFixed(0)} blocks/s ${r.channel.GBps.toFixed(2)} GB/s, ` +
        `warehouse ${r.warehouse.blocksPerSec.toFixed(0)} blocks/s ${r.warehouse.GBps.toFixed(2)} GB/s, ` +
        `ratio ${r.ratio.toFixed(2)}; CPU s/GB ${r.channel.cpuSecondsPerGB.toFixed(3)} vs ` +
        `${r.warehouse.cpuSecondsPerGB.toFixed(3)}, ratio ${r.cpuRatio.toFixed(2)}${r.verified ? '' : ' (BYTES DIFFER)'}`,
    );
  }
  return `${lines.join('\n')}\n`;
}
