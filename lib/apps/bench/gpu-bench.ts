/**
 * `kvtier bench gpu`: kvtier's GPU data path next to the obvious peers, on the same GPU in the
 * same run. PyTorch (pinned `copy_` timed with CUDA events) for host<->device copies; a
 * contiguous copy of the same bytes for layout gathers; POSIX reads into pinned memory plus a copy
 * for file -> GPU; encoded KV blocks decoded on the GPU next to a copy of the decoded bytes
 * (gpu-codec-bench.ts); and a measured Llama-3-8B prefill for restoring a 128k-token context.
 */
import { spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  appendGather,
  appendScatter,
  createCopyEngine,
  createEngine,
  createGpuFileEngine,
  describeKvLayout,
  DeviceRegion,
  gatherBlocks,
  type GpuCopyEngine,
  type IoEngine,
  type KvLayout,
  KvtierError,
  openFile,
  probe,
  Region,
  scatterBlocks,
  TransferBatch,
} from '../../index.js';
import { gpuDecodes } from './gpu-codec-bench.js';
import { median } from './stats.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

export interface GpuBenchOptions {
  /** Copy sizes (default 1, 4, 16, 64 and 256 MiB). */
  sizes: number[];
  /** Timed passes per figure; the median is reported (default 7). */
  trials: number;
  /** Bytes each copy pass moves, as repeated copies of one size (default 1 GiB). */
  bytesPerTrial: number;
  /** Engine blocks per gather pass (default 64). */
  gatherBlocks: number;
  /** File size for file -> GPU (default 1 GiB). */
  fileBytes: number;
  /** Tokens of the context to restore (default 131072: 16 GiB of Llama-3-8B KV); 0 skips it. */
  restoreTokens: number;
  /** Directory for the test files (default the current directory). */
  dir: string;
  /** Python with CUDA PyTorch, for the peers (default python3); null skips them. */
  python: string | null;
  onProgress?: (message: string) => void;
}

export const GPU_DEFAULTS: GpuBenchOptions = {
  sizes: [1, 4, 16, 64, 256].map((m) => m * MiB),
  trials: 7,
  bytesPerTrial: GiB,
  gatherBlocks: 64,
  fileBytes: GiB,
  restoreTokens: 131072,
  dir: '.',
  python: 'python3',
};

export interface GpuBenchRow {
  op: string;
  size: number;
  gbps: number;
  peer: string | null;
  peerGbps: number | null;
  ratio: number | null;
}

export interface GpuBenchReport {
  device: string;
  driver: string;
  batchCopy: boolean;
  kernelPath: string;
  cufile: string;
  rows: GpuBenchRow[];
  restore?: {
    tokens: number;
    bytes: number;
    fromHostSeconds: number;
    fromFileSeconds: number;
    fileIo: string;
    prefillSeconds: number | null;
    prefillHow: string;
    matmulTflops: number | null;
  };
  torch?: string;
  notes: string[];
}

const peerScript = fileURLToPath(new URL('../../../scripts/gpu-peer.py', import.meta.url));

function runPeer<T>(python: string | null, request: object): T | null {
  if (python === null) return null;
  const r = spawnSync(python, [peerScript, JSON.stringify(request)], {
    encoding: 'utf8',
    maxBuffer: 16 * MiB,
    timeout: 600_000,
  });
  if (r.status !== 0) {
    throw new KvtierError(
      'KVTIER_NOT_AVAILABLE',
      `the PyTorch peer failed (${python} ${peerScript}): ${r.stderr?.trim().split('\n').pop() ?? r.error?.message}`,
    );
  }
  return JSON.parse(r.stdout) as T;
}

async function seconds(run: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await run();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function medianSeconds(trials: number, run: () => Promise<unknown>): Promise<number> {
  await run(); // warm-up: first-touch mappings, driver caches
  const times: number[] = [];
  for (let i = 0; i < trials; i++) times.push(await seconds(run));
  return median(times);
}

async function ok(engine: IoEngine, batch: TransferBatch): Promise<void> {
  (await engine.submit(batch)).throwIfFailed();
}

function row(
  op: string,
  size: number,
  bytes: number,
  secs: number,
  peer?: { name: string; gbps: number },
): GpuBenchRow {
  const gbps = bytes / secs / 1e9;
  return {
    op,
    size,
    gbps,
    peer: peer?.name ?? null,
    peerGbps: peer?.gbps ?? null,
    ratio: peer ? gbps / peer.gbps : null,
  };
}

/** Fills a region with random bytes quickly: one random 64 MiB pattern, repeated and stamped. */
function fillRandom(region: Region): void {
  const pattern = randomFillSync(Buffer.allocUnsafe(Math.min(64 * MiB, region.byteLength)));
  for (let at = 0; at < region.byteLength; at += pattern.byteLength) {
    const n = Math.min(pattern.byteLength, region.byteLength - at);
    const view = region.view(at, n);
    view.set(pattern.subarray(0, n));
    // Every repetition differs, so a misplaced copy cannot go unnoticed.
    if (n >= 8) new DataView(view.buffer, view.byteOffset, 8).setFloat64(0, at);
  }
}

async function copies(
  o: GpuBenchOptions,
  gpu: GpuCopyEngine,
  rows: GpuBenchRow[],
  notes: string[],
): Promise<string | undefined> {
  const peer = runPeer<{ rows: { op: string; size: number; gbps: number }[]; torch: string }>(
    o.python,
    {
      op: 'copy',
      sizes: o.sizes,
      trials: o.trials,
      bytesPerTrial: o.bytesPerTrial,
    },
  );
  for (const size of o.sizes) {
    o.onProgress?.(`copies of ${size / MiB} MiB`);
    const reps = Math.max(4, Math.floor(o.bytesPerTrial / size));
    const host = Region.allocate(size, { pin: true });
    if (!host.pinned) notes.push(`host memory could not be pinned: ${host.pinReason}`);
    fillRandom(host);
    const dev = DeviceRegion.allocate(size);
    const back = Region.allocate(size, { pin: true });
    const h2d = new TransferBatch();
    const d2h = new TransferBatch();
    for (let i = 0; i < reps; i++) {
      h2d.copy(dev, 0, host, 0, size);
      d2h.copy(back, 0, dev, 0, size);
    }
    for (const [op, batch] of [
      ['h2d', h2d],
      ['d2h', d2h],
    ] as const) {
      const secs = await medianSeconds(o.trials, () => ok(gpu, batch));
      const p = peer?.rows.find((r) => r.op === op && r.size === size);
      rows.push(row(op, size, size * reps, secs, p && { name: 'torch copy_', gbps: p.gbps }));
    }
    if (!Buffer.from(back.view()).equals(Buffer.from(host.view()))) {
      throw new KvtierError('KVTIER_CORRUPT', `copies of ${size} bytes came back different`);
    }
    await Promise.all([host.close(), dev.close(), back.close()]);
  }
  return peer?.torch;
}

/** vLLM's FlashAttention cache for Llama-3-8B: per layer [2, blocks, 16 tokens, 8 heads, 128] bf16. */
function llamaLayout(numBlocks: number): KvLayout {
  const layerBytes = 2 * numBlocks * 16 * 8 * 128 * 2;
  return describeKvLayout({
    form: 'kv-first',
    numLayers: 32,
    numBlocks,
    blockTokens: 16,
    kvHeads: 8,
    headDim: 128,
    dtype: 'bf16',
    layers: Array.from({ length: 32 }, (_, l) => ({ offset: l * layerBytes })),
  });
}

async function gathers(o: GpuBenchOptions, rows: GpuBenchRow[], notes: string[]): Promise<void> {
  const layout = llamaLayout(Math.max(256, o.gatherBlocks));
  const pool = DeviceRegion.allocate(layout.extent);
  const packedBytes = o.gatherBlocks * layout.blockBytes;
  const packed = Region.allocate(packedBytes, { pin: true });
  const flat = DeviceRegion.allocate(packedBytes);
  const blocks = Array.from({ length: o.gatherBlocks }, (_, i) => (i * 7) % layout.numBlocks);
  const ways = [
    { kernel: true, batch: true },
    { kernel: false, batch: true },
    { kernel: false, batch: false },
  ];
  for (const way of ways) {
    const gpu = createCopyEngine(way);
    const how =
      way.kernel && gpu.kernelPath === ''
        ? 'kernel'
        : way.batch && gpu.batchCopy
          ? 'DMA list'
          : 'DMA each';
    o.onProgress?.(`gathers, ${how}`);
    // The peer: the same bytes as one contiguous device -> pinned host copy per block.
    const contiguous = new TransferBatch();
    for (let j = 0; j < blocks.length; j++) {
      contiguous.copy(
        packed,
        j * layout.blockBytes,
        flat,
        j * layout.blockBytes,
        layout.blockBytes,
      );
    }
    const peerSecs = await medianSeconds(o.trials, () => ok(gpu, contiguous));
    const peer = { name: 'contiguous d2h', gbps: packedBytes / peerSecs / 1e9 };
    // The descriptors are built once, as an integrator builds them once per request; what
    // building them costs is reported on its own below.
    const gatherBatch = new TransferBatch();
    appendGather(gatherBatch, layout, pool, blocks, packed);
    const scatterBatch = new TransferBatch();
    appendScatter(scatterBatch, layout, pool, blocks, packed);
    const g = await medianSeconds(o.trials, () => ok(gpu, gatherBatch));
    rows.push(row(`gather (${how})`, layout.blockBytes, packedBytes, g, peer));
    const s = await medianSeconds(o.trials, () => ok(gpu, scatterBatch));
    const contiguousUp = new TransferBatch();
    for (let j = 0; j < blocks.length; j++) {
      contiguousUp.copy(
        flat,
        j * layout.blockBytes,
        packed,
        j * layout.blockBytes,
        layout.blockBytes,
      );
    }
    const upSecs = await medianSeconds(o.trials, () => ok(gpu, contiguousUp));
    rows.push(
      row(`scatter (${how})`, layout.blockBytes, packedBytes, s, {
        name: 'contiguous h2d',
        gbps: packedBytes / upSecs / 1e9,
      }),
    );
    await gpu.close();
  }
  const plan = await medianSeconds(o.trials, () => {
    appendGather(new TransferBatch(), layout, pool, blocks, packed);
    return Promise.resolve();
  });
  notes.push(
    `building the gather descriptors of ${blocks.length} blocks (${blocks.length * 64} pieces) ` +
      `takes ${(plan * 1e6).toFixed(0)} µs in JavaScript, outside the gather figures`,
  );
  await Promise.all([pool.close(), packed.close(), flat.close()]);
}

async function fileReads(
  o: GpuBenchOptions,
  gpu: GpuCopyEngine,
  rows: GpuBenchRow[],
  notes: string[],
): Promise<string> {
  const path = join(o.dir, `kvtier-bench-gpu-${process.pid}.kvt`);
  const size = o.fileBytes;
  const host = Region.allocate(size, { pin: true });
  fillRandom(host);
  const io = createEngine();
  const file = await openFile(path, { create: true, truncate: true, size });
  const op = 16 * MiB;
  try {
    const w = new TransferBatch();
    for (let at = 0; at < size; at += op) w.write(file, at, host, at, Math.min(op, size - at));
    await ok(io, w);
    await io.sync(file);
    const peer = runPeer<{ gbps: number }>(o.python, {
      op: 'file',
      path,
      bytes: size,
      chunk: op,
      trials: o.trials,
    });
    const dev = DeviceRegion.allocate(size);
    const back = Region.allocate(size, { pin: true });
    let cufileMode = 'cuFile not used';
    for (const path of ['cufile', 'posix'] as const) {
      let engine;
      try {
        engine = createGpuFileEngine({ io: path, threads: 8, chunkBytes: 4 * MiB });
      } catch (e) {
        notes.push(`file -> GPU through ${path}: ${(e as Error).message}`);
        continue;
      }
      if (path === 'cufile') cufileMode = engine.stats().reason;
      o.onProgress?.(`file -> GPU (${path})`);
      const r = new TransferBatch();
      for (let at = 0; at < size; at += op) r.read(file, at, dev, at, Math.min(op, size - at));
      let secs: number;
      try {
        secs = await medianSeconds(o.trials, () => ok(engine, r));
      } catch (e) {
        notes.push(`file -> GPU through ${path}: ${(e as Error).message}`);
        await engine.close();
        continue;
      }
      rows.push(
        row(
          `file->gpu (${path})`,
          op,
          size,
          secs,
          peer ? { name: 'preadv+copy_', gbps: peer.gbps } : undefined,
        ),
      );
      await ok(gpu, new TransferBatch().copy(back, 0, dev, 0, size));
      if (!Buffer.from(back.view()).equals(Buffer.from(host.view()))) {
        throw new KvtierError('KVTIER_CORRUPT', `file -> GPU through ${path} read different bytes`);
      }
      back.view().fill(0);
      await engine.close();
    }
    await Promise.all([dev.close(), back.close()]);
    return cufileMode;
  } finally {
    await file.close();
    await io.close();
    await host.close();
    await rm(path, { force: true });
  }
}

async function restore(
  o: GpuBenchOptions,
  gpu: GpuCopyEngine,
  notes: string[],
): Promise<GpuBenchReport['restore']> {
  const numBlocks = o.restoreTokens / 16;
  const layout = llamaLayout(numBlocks);
  const bytes = numBlocks * layout.blockBytes;
  const blocks = Array.from({ length: numBlocks }, (_, i) => i);
  const pool = DeviceRegion.allocate(layout.extent);
  o.onProgress?.(`restore: pinning ${bytes / GiB} GiB of host tier`);
  const host = Region.allocate(bytes, { pin: true });
  fillRandom(host);
  // Restores go out as batches of 512 blocks, all in flight at once across the engine's streams.
  const scatterAll = (src: Region | DeviceRegion) =>
    Promise.all(
      Array.from({ length: Math.ceil(numBlocks / 512) }, (_, c) =>
        scatterBlocks(gpu, pool, layout, blocks.slice(c * 512, (c + 1) * 512), src, {
          packedOffset: c * 512 * layout.blockBytes,
        }),
      ),
    );
  const fromHost = await medianSeconds(Math.min(3, o.trials), () => scatterAll(host));
  // Check one block made it: gather it back and compare.
  const probeBlock = Region.allocate(layout.blockBytes, { pin: true });
  const mid = numBlocks >> 1;
  await gatherBlocks(gpu, pool, layout, [mid], probeBlock);
  if (
    !Buffer.from(probeBlock.view()).equals(
      Buffer.from(host.view(mid * layout.blockBytes, layout.blockBytes)),
    )
  ) {
    throw new KvtierError('KVTIER_CORRUPT', 'restore from the host tier scattered wrong bytes');
  }

  // The file tier: the packed blocks on disk, read straight into GPU memory, then scattered.
  const path = join(o.dir, `kvtier-bench-restore-${process.pid}.kvt`);
  const io = createEngine();
  const file = await openFile(path, { create: true, truncate: true, size: bytes });
  const op = 64 * MiB;
  let fromFile: number;
  let fileIo: string;
  try {
    o.onProgress?.(`restore: writing ${bytes / GiB} GiB file tier`);
    const w = new TransferBatch();
    for (let at = 0; at < bytes; at += op) w.write(file, at, host, at, Math.min(op, bytes - at));
    await ok(io, w);
    await io.sync(file);
    await host.close();
    const staging = DeviceRegion.allocate(bytes);
    const reader = createGpuFileEngine({ io: 'auto', threads: 8 });
    fileIo = reader.stats().reason;
    const r = new TransferBatch();
    for (let at = 0; at < bytes; at += op) r.read(file, at, staging, at, Math.min(op, bytes - at));
    o.onProgress?.('restore: file tier -> GPU');
    fromFile = await medianSeconds(Math.min(3, o.trials), async () => {
      await ok(reader, r);
      await scatterAll(staging);
    });
    await gatherBlocks(gpu, pool, layout, [mid], probeBlock);
    const expect = Region.allocate(layout.blockBytes);
    await io.read(file, mid * layout.blockBytes, expect);
    if (!Buffer.from(probeBlock.view()).equals(Buffer.from(expect.view()))) {
      throw new KvtierError('KVTIER_CORRUPT', 'restore from the file tier scattered wrong bytes');
    }
    await Promise.all([expect.close(), staging.close(), reader.close()]);
  } finally {
    await file.close();
    await io.close();
    await rm(path, { force: true });
  }
  await Promise.all([pool.close(), probeBlock.close()]);
  o.onProgress?.('restore: prefill on the same GPU (PyTorch)');
  let prefill: { prefillSeconds: number; matmulTflops: number } | null = null;
  try {
    prefill = runPeer(o.python, { op: 'prefill', tokens: o.restoreTokens, layers: 32 });
  } catch (e) {
    notes.push((e as Error).message);
  }
  return {
    tokens: o.restoreTokens,
    bytes,
    fromHostSeconds: fromHost,
    fromFileSeconds: fromFile,
    fileIo,
    prefillSeconds: prefill?.prefillSeconds ?? null,
    prefillHow:
      'measured: one Llama-3-8B decoder layer (random bf16 weights, causal SDPA, GQA) over the ' +
      'whole context in PyTorch, times 32 layers; embeddings and the LM head left out',
    matmulTflops: prefill?.matmulTflops ?? null,
  };
}

export async function runGpuBench(options: Partial<GpuBenchOptions> = {}): Promise<GpuBenchReport> {
  const o: GpuBenchOptions = { ...GPU_DEFAULTS, ...options };
  const info = probe();
  if (!info.cuda.available) {
    throw new KvtierError('KVTIER_NOT_AVAILABLE', `no usable CUDA GPU: ${info.cuda.reason ?? ''}`);
  }
  const notes: string[] = [];
  if (process.env.KVTIER_UDEV_SHIM) notes.push(process.env.KVTIER_UDEV_SHIM);
  const rows: GpuBenchRow[] = [];
  const gpu = createCopyEngine({ streams: 2 });
  try {
    const torch = await copies(o, gpu, rows, notes);
    await gpuDecodes(o, gpu, rows, notes);
    await gathers(o, rows, notes);
    const cufile = await fileReads(o, gpu, rows, notes);
    const restored = o.restoreTokens > 0 ? await restore(o, gpu, notes) : undefined;
    return {
      device: info.cuda.devices?.[0]?.name ?? 'unknown',
      driver: info.cuda.version ?? 'unknown',
      batchCopy: gpu.batchCopy,
      kernelPath: gpu.kernelPath === '' ? 'segment-copy kernel loaded' : gpu.kernelPath,
      cufile,
      rows,
      ...(restored ? { restore: restored } : {}),
      ...(torch ? { torch } : {}),
      notes,
    };
  } finally {
    await gpu.close();
  }
}
