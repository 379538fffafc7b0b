/**
 * `kvtier bench warehouse`: what the Warehouse's control plane costs, next to the obvious peers.
 *
 * 1. io: Warehouse put/get on a single O_DIRECT file tier, against the raw file engine moving the
 *    same bytes with TransferBatch in batches of the same size, with the same number of calls in
 *    flight, on the same file system, through the same engine kind and queue depth. The Warehouse
 *    does everything it does in production: a CRC-32C of every block put (computed on the engine's
 *    threads while the kernel writes it),
 *    placement plans and commits, a self-describing slot header written with every block, and a
 *    CRC-32C check of every block read by get (computed on the engine thread as the read lands).
 *    For every block size, repetition and op, the Warehouse pass and the engine pass run back to
 *    back, in alternating order from one repetition to the next; the figure is the median.
 * 2. chainKeys and 3. prefix lookups: see keys-bench.ts.
 */
import { randomBytes, randomFillSync } from 'node:crypto';
import { rmSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import { join } from 'node:path';

import {
  chainKeys,
  createEngine,
  type EngineKind,
  type IoEngine,
  type Key,
  KeyChain,
  type KvFile,
  KvtierError,
  openFile,
  Region,
  TransferBatch,
  Warehouse,
} from '../../index.js';
import { abortError, KEY_BYTES, native } from '../../internal.js';
import { validateFileBenchOptions } from './file-bench.js';
import {
  runChainKeysBench,
  runLookupBench,
  validateKeysBenchOptions,
  type ChainKeysRow,
  type KeysBenchOptions,
  type KeysBenchResolved,
  type KeysRun,
  type LookupRow,
} from './keys-bench.js';
import { formatSize } from '../sizes.js';
import { median } from './stats.js';

/** Warehouse / raw engine, at least (issue 3, "Speed"). */
export const IO_TARGET = 0.9;

export interface WarehouseBenchOptions {
  /** Directory for the warehouse and the engine's file (default: the OS temp dir). */
  dir?: string;
  /** Bytes moved per pass and per block size (default 512 MiB). */
  size?: number;
  /** Block sizes (default 256 KiB, 1 MiB, 4 MiB). */
  blockSizes?: number[];
  /** Keys per put/get call, descriptors per engine batch (default 32). */
  batch?: number;
  /** put/get calls (engine batches) in flight at once (default 2). */
  inFlight?: number;
  /** Engine queue depth, both sides (default 32). */
  queueDepth?: number;
  /** Engine kind, both sides (default: io_uring where usable, else threads). */
  engine?: EngineKind;
  /** Repetitions of the io passes; medians are reported (default 5). */
  reps?: number;
  /** Sections to run (default all three). */
  io?: boolean;
  chainKeys?: boolean;
  lookup?: boolean;
  keys?: KeysBenchOptions;
  onProgress?: (message: string) => void;
  /** Called with each path the benchmark creates, before it does, so a caller can remove it. */
  onFile?: (path: string) => void;
  signal?: AbortSignal;
}

export interface IoRow {
  section: 'io';
  op: 'put' | 'get';
  blockSize: number;
  blocks: number;
  batch: number;
  inFlight: number;
  engine: EngineKind;
  queueDepth: number;
  /** The Warehouse's median GB/s (1e9 bytes per second) of payload. */
  gbps: number;
  peer: 'engine';
  peerGbps: number;
  /** gbps / peerGbps. */
  ratio: number;
  target: number;
  meetsTarget: boolean;
  /**
   * The raw engine again, asked for the CRC-32C of every transfer (computed on the engine's
   * threads, as the Warehouse's are): what checksumming alone costs, so that ratio splits into
   * the checksum's share and the control plane's. Not the target's peer.
   */
  crcPeerGbps: number;
  /** gbps / crcPeerGbps. */
  crcRatio: number;
}

export type WarehouseBenchRow = IoRow | ChainKeysRow | LookupRow;

export interface IoRun {
  tool: 'warehouse' | 'engine' | 'engine+crc';
  op: 'put' | 'get';
  blockSize: number;
  rep: number;
  gbps: number;
  ms: number;
  /** 1-minute load average when the pass ended. */
  load1: number;
}

export interface WarehouseBenchReport {
  rows: WarehouseBenchRow[];
  io?: {
    dir: string;
    size: number;
    blockSizes: number[];
    batch: number;
    inFlight: number;
    queueDepth: number;
    engine: EngineKind;
    reps: number;
    method: string;
  };
  keys?: KeysBenchResolved & { method: string };
  /** os.loadavg() (1, 5, 15 minutes) as the benchmark went: others may share the CPUs. */
  load: { cpus: number; start: number[]; afterIo?: number[]; end: number[] };
  machine: { cpus: number; cpu: string; kernel: string; node: string; arch: string };
  /** The sample spread per chainKeys/lookup measurement: [min, median, max]. */
  keySamples?: { section: string; variant: string; tool: string; spread: number[] }[];
  runs: IoRun[];
}

export const WAREHOUSE_DEFAULTS = {
  size: 512 * 2 ** 20,
  blockSizes: [256 * 2 ** 10, 2 ** 20, 4 * 2 ** 20],
  batch: 32,
  inFlight: 2,
  queueDepth: 32,
  reps: 5,
} as const;

/** Staging memory at most (inFlight x batch x block size), so a typo cannot eat the machine. */
const MAX_STAGING = 2 ** 31;

function bad(message: string): KvtierError {
  return new KvtierError('KVTIER_BAD_ARGUMENT', message);
}

export interface WarehouseBenchResolved {
  dir: string;
  size: number;
  blockSizes: number[];
  batch: number;
  inFlight: number;
  queueDepth: number;
  reps: number;
  engine?: EngineKind;
  sections: { io: boolean; chainKeys: boolean; lookup: boolean };
  keys: KeysBenchResolved;
}

/** Checks the options; the only thing it writes is an empty probe file in the directory. */
export function validateWarehouseBenchOptions(
  options: WarehouseBenchOptions,
): WarehouseBenchResolved {
  const batch = options.batch ?? WAREHOUSE_DEFAULTS.batch;
  const inFlight = options.inFlight ?? WAREHOUSE_DEFAULTS.inFlight;
  if (!Number.isSafeInteger(batch) || batch <= 0 || batch > 4096) {
    throw bad(`batch must be an integer from 1 to 4096, got ${batch}`);
  }
  if (!Number.isSafeInteger(inFlight) || inFlight <= 0 || inFlight > 64) {
    throw bad(`in-flight must be an integer from 1 to 64, got ${inFlight}`);
  }
  const engine = options.engine;
  if (engine !== undefined && engine !== 'io_uring' && engine !== 'threads') {
    throw bad(`engine must be 'io_uring' or 'threads', got '${String(engine)}'`);
  }
  const sections = {
    io: options.io ?? true,
    chainKeys: options.chainKeys ?? true,
    lookup: options.lookup ?? true,
  };
  if (!sections.io && !sections.chainKeys && !sections.lookup) {
    throw bad('nothing to measure: every section is turned off');
  }
  const file = validateFileBenchOptions({
    ...(options.dir !== undefined ? { dir: options.dir } : {}),
    size: options.size ?? WAREHOUSE_DEFAULTS.size,
    blockSizes: options.blockSizes ?? [...WAREHOUSE_DEFAULTS.blockSizes],
    queueDepth: options.queueDepth ?? WAREHOUSE_DEFAULTS.queueDepth,
    reps: options.reps ?? WAREHOUSE_DEFAULTS.reps,
  });
  for (const bs of file.blockSizes) {
    if (inFlight * batch * bs > MAX_STAGING) {
      throw bad(
        `in-flight x batch x block size needs ${formatSize(inFlight * batch * bs)} of staging ` +
          `memory; at most ${formatSize(MAX_STAGING)}`,
      );
    }
  }
  const resolved: WarehouseBenchResolved = {
    dir: file.dir,
    size: file.size,
    blockSizes: file.blockSizes,
    batch,
    inFlight,
    queueDepth: file.queueDepth,
    reps: file.reps,
    sections,
    keys: validateKeysBenchOptions(options.keys ?? {}),
  };
  if (engine !== undefined) resolved.engine = engine;
  return resolved;
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

/**
 * Runs `fn` over [0, n) in calls of at most `batch` items, `inFlight` calls at once (each lane
 * owns staging slot `lane`); returns the wall time in seconds.
 */
export async function pipeline(
  n: number,
  batch: number,
  inFlight: number,
  fn: (from: number, to: number, lane: number) => Promise<void>,
): Promise<number> {
  let next = 0;
  const lane = async (l: number): Promise<void> => {
    while (next < n) {
      const from = next;
      next = Math.min(n, next + batch);
      await fn(from, next, l);
    }
  };
  const lanes = Math.max(1, Math.min(inFlight, Math.ceil(n / batch)));
  const start = process.hrtime.bigint();
  await Promise.all(Array.from({ length: lanes }, (_, l) => lane(l)));
  return Number(process.hrtime.bigint() - start) / 1e9;
}

interface IoSide {
  put(): Promise<number>;
  get(): Promise<number>;
}

/** The Warehouse side: put the chain in `batch`-key calls, get it back, evict it (untimed). */
class WarehouseSide implements IoSide {
  private constructor(
    private readonly warehouse: Warehouse,
    private readonly chunks: KeyChain[],
    private readonly everyKey: Key[],
    private readonly views: Uint8Array[],
    private readonly blocks: number,
    private readonly batch: number,
    private readonly inFlight: number,
  ) {}

  static async open(
    dir: string,
    blockSize: number,
    blocks: number,
    r: WarehouseBenchResolved,
    engine: EngineKind,
    staging: Region,
  ): Promise<WarehouseSide> {
    const warehouse = await Warehouse.open({
      blockBytes: blockSize,
      tiers: [{ kind: 'file', dir, bytes: blocks * blockSize }],
      engine: { kind: engine, queueDepth: r.queueDepth },
    });
    // One long prompt's chain, cut into the calls an engine integrator makes: a KeyChain per call
    // over the chain's own bytes, its hex made before timing (as the integrator's would be).
    const tokens = new Uint32Array(blocks * 16);
    for (let i = 0; i < tokens.length; i++) tokens[i] = (i * 2654435761) >>> 0;
    const chain = chainKeys(tokens, { blockTokens: 16 });
    const chunks: KeyChain[] = [];
    for (let from = 0; from < blocks; from += r.batch) {
      const to = Math.min(blocks, from + r.batch);
      const c = new KeyChain(chain.bytes.subarray(from * KEY_BYTES, to * KEY_BYTES));
      c.keys();
      chunks.push(c);
    }
    const views = Array.from({ length: r.inFlight }, (_, l) =>
      staging.view(l * r.batch * blockSize, r.batch * blockSize),
    );
    // Evicted last-first, so the freed slots are handed out first-first on the next put, as the
    // engine side writes them.
    const everyKey = [...chain.keys()].reverse();
    return new WarehouseSide(warehouse, chunks, everyKey, views, blocks, r.batch, r.inFlight);
  }

  async put(): Promise<number> {
    let stored = 0;
    const s = await pipeline(this.blocks, this.batch, this.inFlight, async (from, _to, lane) => {
      const r = await this.warehouse.put(this.chunks[from / this.batch]!, this.views[lane]!);
      stored += r.stored;
    });
    if (stored !== this.blocks) {
      throw new KvtierError('KVTIER_IO', `the warehouse stored ${stored} of ${this.blocks} blocks`);
    }
    return s;
  }

  async get(): Promise<number> {
    let found = 0;
    const s = await pipeline(this.blocks, this.batch, this.inFlight, async (from, _to, lane) => {
      const r = await this.warehouse.get(this.chunks[from / this.batch]!, this.views[lane]!);
      found += r.count;
    });
    if (found !== this.blocks) {
      throw new KvtierError(
        'KVTIER_IO',
        `the warehouse returned ${found} of ${this.blocks} blocks (corrupt: ${this.warehouse.stats().corrupt})`,
      );
    }
    return s;
  }

  async clear(): Promise<void> {
    const { removed } = await this.warehouse.evict(this.everyKey);
    if (removed !== this.blocks) {
      throw new KvtierError('KVTIER_IO', `evicted ${removed} of ${this.blocks} blocks`);
    }
  }

  close(): Promise<void> {
    return this.warehouse.close();
  }
}

/**
 * The raw engine side: the same bytes, the same calls, TransferBatch writes and reads; with
 * `checksum`, each transfer also asks for its CRC-32C, computed on the engine's threads as the
 * Warehouse's are (comparing a read's with the stored one is an integer compare, left out).
 */
class EngineSide implements IoSide {
  constructor(
    private readonly engine: IoEngine,
    private readonly file: KvFile,
    private readonly staging: Region,
    private readonly blockSize: number,
    private readonly blocks: number,
    private readonly batch: number,
    private readonly inFlight: number,
    private readonly checksum = false,
  ) {}

  private pass(op: 'read' | 'write'): Promise<number> {
    const { blockSize: bs, batch, staging, file, checksum } = this;
    const options = { checksum };
    return pipeline(this.blocks, batch, this.inFlight, async (from, to, lane) => {
      const b = new TransferBatch();
      for (let i = from; i < to; i++) {
        const mem = (lane * batch + (i - from)) * bs;
        if (op === 'write') b.write(file, i * bs, staging, mem, bs, options);
        else b.read(file, i * bs, staging, mem, bs, options);
      }
      const r = await this.engine.submit(b);
      r.throwIfFailed();
      for (const n of r.bytes) {
        if (n !== bs) throw new KvtierError('KVTIER_IO', `the engine moved ${n} of ${bs} bytes`);
      }
      if (checksum && r.checksums?.length !== to - from) {
        throw new KvtierError('KVTIER_IO', 'the engine returned no checksums');
      }
    });
  }

  put(): Promise<number> {
    return this.pass('write');
  }

  get(): Promise<number> {
    return this.pass('read');
  }
}

async function runIo(
  r: WarehouseBenchResolved,
  engineKind: EngineKind,
  options: WarehouseBenchOptions,
  runs: IoRun[],
): Promise<IoRow[]> {
  const progress = options.onProgress ?? (() => {});
  const { signal } = options;
  const tag = `kvtier-bench-warehouse-${process.pid}-${randomBytes(4).toString('hex')}`;
  const rows: IoRow[] = [];
  const total = r.blockSizes.length * r.reps;
  let step = 0;
  for (const bs of r.blockSizes) {
    const blocks = r.size / bs;
    const whDir = join(r.dir, `${tag}-${bs}`);
    const rawPath = join(r.dir, `${tag}-${bs}-engine.bin`);
    options.onFile?.(whDir);
    options.onFile?.(rawPath);
    const staging = Region.allocate(r.inFlight * r.batch * bs, { pin: false });
    randomFillSync(new Uint8Array(staging.buffer));
    const engine = createEngine({ kind: engineKind, queueDepth: r.queueDepth });
    let file: KvFile | undefined;
    let wh: WarehouseSide | undefined;
    try {
      file = await openFile(rawPath, { create: true, truncate: true, direct: true, size: r.size });
      const raw = new EngineSide(engine, file, staging, bs, blocks, r.batch, r.inFlight);
      const rawCrc = new EngineSide(engine, file, staging, bs, blocks, r.batch, r.inFlight, true);
      wh = await WarehouseSide.open(whDir, bs, blocks, r, engineKind, staging);
      // Untimed: every block of both files written once, both read paths warm.
      progress(`${formatSize(bs)}: warming up`);
      await raw.put();
      await raw.get();
      await wh.put();
      await wh.get();
      await wh.clear();
      for (let rep = 0; rep < r.reps; rep++) {
        step++;
        // The warehouse and the plain engine stay next to each other whatever the order.
        const sides: [IoRun['tool'], IoSide][] = [
          ['warehouse', wh],
          ['engine', raw],
          ['engine+crc', rawCrc],
        ];
        if (rep % 2 === 1) sides.reverse();
        for (const op of ['put', 'get'] as const) {
          for (const [tool, side] of sides) {
            throwIfAborted(signal);
            progress(`[${step}/${total}] ${formatSize(bs)} rep ${rep + 1}: ${op}, ${tool}`);
            const seconds = await side[op]();
            runs.push({
              tool,
              op,
              blockSize: bs,
              rep,
              gbps: r.size / seconds / 1e9,
              ms: seconds * 1e3,
              load1: loadavg()[0] ?? 0,
            });
          }
        }
        await wh.clear();
      }
    } finally {
      await wh?.close().catch(() => {});
      await file?.close().catch(() => {});
      await engine.close().catch(() => {});
      await staging.close().catch(() => {});
      rmSync(whDir, { recursive: true, force: true });
      rmSync(rawPath, { force: true });
    }
    for (const op of ['put', 'get'] as const) {
      const pick = (tool: IoRun['tool']): number =>
        median(
          runs
            .filter((x) => x.tool === tool && x.op === op && x.blockSize === bs)
            .map((x) => x.gbps),
        );
      const gbps = pick('warehouse');
      const peerGbps = pick('engine');
      const ratio = gbps / peerGbps;
      const crcPeerGbps = pick('engine+crc');
      rows.push({
        section: 'io',
        op,
        blockSize: bs,
        blocks,
        batch: r.batch,
        inFlight: r.inFlight,
        engine: engineKind,
        queueDepth: r.queueDepth,
        gbps,
        peer: 'engine',
        peerGbps,
        ratio,
        target: IO_TARGET,
        meetsTarget: ratio >= IO_TARGET,
        crcPeerGbps,
        crcRatio: gbps / crcPeerGbps,
      });
    }
  }
  return rows;
}

function spreads(runs: KeysRun[]): NonNullable<WarehouseBenchReport['keySamples']> {
  const groups = new Map<string, { section: string; variant: string; tool: string; v: number[] }>();
  for (const x of runs) {
    const k = `${x.section}\0${x.variant}\0${x.tool}`;
    let g = groups.get(k);
    if (!g) groups.set(k, (g = { section: x.section, variant: x.variant, tool: x.tool, v: [] }));
    g.v.push(x.value);
  }
  return [...groups.values()].map((g) => ({
    section: g.section,
    variant: g.variant,
    tool: g.tool,
    spread: [Math.min(...g.v), median(g.v), Math.max(...g.v)],
  }));
}

const IO_METHOD =
  'one file-tier Warehouse (O_DIRECT, durability none) vs the raw engine on its own file in the ' +
  'same directory, same engine kind and queue depth; put = Warehouse.put of `batch` keys per call ' +
  '(plan, payload writes each checksummed with CRC-32C on the engine threads beside the write, ' +
  'then one write of the slot headers, commit), ' +
  '`inFlight` calls at once; engine put = one TransferBatch of `batch` writes per call; get = ' +
  'Warehouse.get (reads with CRC-32C computed on the engine thread and checked) vs TransferBatch ' +
  'reads without checksums; engine+crc = the same TransferBatch passes with { checksum: true } ' +
  '(CRC-32C on the engine threads: beside each write, after each read), reported beside the ' +
  'ratio to split it into checksum and control plane; both files written once untimed first; ' +
  'passes alternate in order per repetition (warehouse and engine always adjacent); blocks ' +
  'evicted between repetitions (untimed); GB/s = 1e9 B/s of payload';

const KEYS_METHOD =
  'chainKeys vs a per-block createHash(sha256) loop producing the same bytes (asserted equal ' +
  'before timing); lookup of a fully cached chain vs a Map.get loop over the same hex keys; ' +
  'kvtier and peer samples alternate; medians; ratio = kvtier throughput / peer throughput';

/** Runs the benchmark. Files it makes are removed whatever happens. */
export async function runWarehouseBench(
  options: WarehouseBenchOptions = {},
): Promise<WarehouseBenchReport> {
  const r = validateWarehouseBenchOptions(options);
  const progress = options.onProgress ?? (() => {});
  const start = loadavg();
  const report: WarehouseBenchReport = {
    rows: [],
    load: { cpus: cpus().length, start, end: start },
    machine: {
      cpus: cpus().length,
      cpu: cpus()[0]?.model ?? 'unknown',
      kernel: release(),
      node: process.version,
      arch: process.arch,
    },
    runs: [],
  };
  if (r.sections.io) {
    const engine: EngineKind =
      r.engine ?? (native().probe().ioUring.available ? 'io_uring' : 'threads');
    report.rows.push(...(await runIo(r, engine, options, report.runs)));
    report.io = {
      dir: r.dir,
      size: r.size,
      blockSizes: r.blockSizes,
      batch: r.batch,
      inFlight: r.inFlight,
      queueDepth: r.queueDepth,
      engine,
      reps: r.reps,
      method: IO_METHOD,
    };
    report.load.afterIo = loadavg();
  }
  const keyRuns: KeysRun[] = [];
  if (r.sections.chainKeys) {
    throwIfAborted(options.signal);
    report.rows.push(...(await runChainKeysBench(r.keys, keyRuns, progress)));
  }
  if (r.sections.lookup) {
    throwIfAborted(options.signal);
    report.rows.push(...(await runLookupBench(r.keys, keyRuns, progress)));
  }
  if (r.sections.chainKeys || r.sections.lookup) {
    report.keys = { ...r.keys, method: KEYS_METHOD };
    report.keySamples = spreads(keyRuns);
  }
  report.load.end = loadavg();
  return report;
}
