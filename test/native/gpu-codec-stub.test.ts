/**
 * The GPU decode path end to end without a GPU: a stub libcuda.so.1 (stubs/cuda-host.cc) whose
 * "GPU memory" is host memory and whose cuLaunchKernel runs the decode kernels' element function
 * (native/gpu/codec_decode.h) on the CPU. What this checks: the copy engine's decode call (range,
 * alignment, pinning and header checks, the staging copy, the kernel's parameters, completion),
 * GpuCodec, and that a Warehouse promoting blocks from an encoded file tier into its GPU tier takes
 * the GPU decode and returns decode(encode(x)). What it cannot check, the kernels on a real GPU, is
 * test/gpu/codec.test.ts's.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { probe } from '../../lib/core/probe.js';
import { prerequisite, tempDir } from '../helpers.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const dir = tempDir('kvtier-gpu-stub-');
afterAll(() => dir.remove());

let compiler: string | undefined;
beforeAll(() => {
  for (const cxx of ['c++', 'g++']) {
    if (spawnSync(cxx, ['--version']).status === 0) {
      compiler = cxx;
      break;
    }
  }
});

/** Runs `script` (an ES module body; kv, internal, values imported) against the stub driver. */
function child(script: string): unknown {
  const lib = join(dir.path, 'lib');
  execFileSync('mkdir', ['-p', lib]);
  execFileSync(compiler!, [
    '-shared',
    '-fPIC',
    '-O1',
    '-std=c++17',
    `-I${join(root, 'native/gpu')}`,
    join(root, 'test/native/stubs/cuda-host.cc'),
    '-o',
    join(lib, 'libcuda.so.1'),
  ]);
  const url = (p: string): string => JSON.stringify(new URL(p, `file://${root}`).href);
  const file = join(dir.path, 'script.mjs');
  writeFileSync(
    file,
    `import * as kv from ${url('dist/index.js')};
     import { BlockCodec, GpuCodec } from ${url('dist/internal.js')};
     import { syntheticKv, toBytes } from ${url('dist/apps/bench/kv-values.js')};
     ${script}`,
  );
  const r = spawnSync(process.execPath, [file], {
    encoding: 'utf8',
    env: {
      ...process.env,
      LD_LIBRARY_PATH: lib,
      KVTIER_STUB_LOG: join(dir.path, 'launches.log'),
      STUB_DIR: dir.path,
    },
    timeout: 120_000,
  });
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const launches = (): string[] => {
  try {
    return readFileSync(join(dir.path, 'launches.log'), 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
};

// A real driver on the default loader path would be found before the stub.
const usable = (): boolean =>
  prerequisite(compiler !== undefined, 'no C++ compiler (c++) to build the stub driver') &&
  prerequisite(
    probe().cuda.path === undefined,
    `a CUDA driver is installed (${probe().cuda.path}); test/gpu runs the real thing`,
    'hardware',
  );

describe('GPU decode through a host-memory stub driver', () => {
  it("decodes every codec and dtype to the CPU decoder's bytes, at odd offsets", () => {
    if (!usable()) return;
    const r = child(`
      const engine = kv.createCopyEngine();
      const out = { decodePath: engine.decodePath, checked: 0, bad: [] };
      const specs = [{ codec: 'fp8-e4m3' }, { codec: 'int8' }, { codec: 'int8', scales: 'token' },
        { codec: 'kivi4', group: 8 }, { codec: 'kivi2', group: 4 }];
      const shapes = [{ layers: 2, tokens: 5, heads: 3, dim: 16 }, { layers: 1, tokens: 16, heads: 2, dim: 32 }];
      for (const dtype of ['fp16', 'bf16', 'fp32'])
        for (const spec of specs)
          for (const shape of shapes) {
            const c = BlockCodec.open(spec, { dtype, numLayers: shape.layers, blockTokens: shape.tokens,
              kvHeads: shape.heads, headDim: shape.dim });
            const blocks = 3;
            const enc = new Uint8Array(c.encodedBytes * blocks);
            c.encode(toBytes(syntheticKv(shape, blocks, 5, { channels: 2, magnitude: 12 }), dtype), enc, blocks);
            const src = kv.Region.allocate(enc.length + 3, { pin: true });
            src.view().set(enc, 3);
            const dev = kv.DeviceRegion.allocate(4096 + c.decodedBytes * blocks);
            await GpuCodec.open(engine, c).decodeToDevice(src, 3, dev, 4096, blocks);
            const back = kv.Region.allocate(c.decodedBytes * blocks, { pin: true });
            (await engine.submit(new kv.TransferBatch().copy(back, 0, dev, 4096, back.byteLength))).throwIfFailed();
            const cpu = new Uint8Array(back.byteLength);
            c.decode(enc, cpu, blocks);
            if (!Buffer.from(back.view()).equals(Buffer.from(cpu))) out.bad.push([spec, dtype, shape]);
            out.checked++;
            await Promise.all([src.close(), dev.close(), back.close()]);
          }
      await engine.close();
      // Staging for two blocks: five go in runs of 2, 2 and 1, the last one at its own offset.
      const c = BlockCodec.open({ codec: 'kivi4', group: 8 }, { dtype: 'fp16', numLayers: 2,
        blockTokens: 5, kvHeads: 3, headDim: 16 });
      const small = kv.createCopyEngine({ decodeStagingBytes: 2 * c.encodedBytes + 1 });
      const enc = kv.Region.allocate(c.encodedBytes * 5, { pin: true });
      c.encode(toBytes(syntheticKv({ layers: 2, tokens: 5, heads: 3, dim: 16 }, 5, 8), 'fp16'), enc.view(), 5);
      const dev = kv.DeviceRegion.allocate(c.decodedBytes * 5);
      await GpuCodec.open(small, c).decodeToDevice(enc, 0, dev, 0, 5);
      const back = kv.Region.allocate(c.decodedBytes * 5, { pin: true });
      (await small.submit(new kv.TransferBatch().copy(back, 0, dev, 0, back.byteLength))).throwIfFailed();
      const cpu = new Uint8Array(back.byteLength);
      c.decode(enc.view(), cpu, 5);
      out.runs = Buffer.from(back.view()).equals(Buffer.from(cpu));
      await small.close();
      process.stdout.write(JSON.stringify(out));`) as {
      runs: boolean;
      decodePath: string;
      checked: number;
      bad: unknown[];
    };
    expect(r.decodePath).toBe('');
    expect(r.bad).toEqual([]);
    expect(r.checked).toBe(30);
    expect(r.runs).toBe(true);
    expect(launches().map((l) => l.replace(/^decode codec=\d /, '')).slice(30)).toEqual([
      'blocks=2',
      'blocks=2',
      'blocks=1',
    ]);
    expect(launches().length).toBe(33);
  });

  it('refuses bad headers, unpinned sources, misaligned and short targets before any launch', () => {
    if (!usable()) return;
    const before = launches().length;
    const r = child(`
      const engine = kv.createCopyEngine();
      const layout = { dtype: 'fp16', numLayers: 2, blockTokens: 4, kvHeads: 2, headDim: 8 };
      const int8 = BlockCodec.open({ codec: 'int8' }, layout);
      const fp8 = BlockCodec.open({ codec: 'fp8-e4m3' }, layout);
      const enc = new Uint8Array(int8.encodedBytes * 2);
      int8.encode(toBytes(syntheticKv({ layers: 2, tokens: 4, heads: 2, dim: 8 }, 2, 1), 'fp16'), enc, 2);
      enc[int8.encodedBytes + 6] = 3; // block 1 claims fp32
      const src = kv.Region.allocate(enc.length, { pin: true });
      src.view().set(enc);
      const unpinned = kv.Region.allocate(enc.length, { pin: false });
      unpinned.view().set(enc);
      const dev = kv.DeviceRegion.allocate(int8.decodedBytes * 2 + 2);
      const fill = kv.Region.allocate(dev.byteLength, { pin: true });
      fill.view().fill(0x5a);
      (await engine.submit(new kv.TransferBatch().copy(dev, 0, fill, 0, fill.byteLength))).throwIfFailed();
      const codes = [];
      const attempt = async (f) => { try { await f(); codes.push('ok'); } catch (e) { codes.push(e.code + ': ' + e.message); } };
      await attempt(() => GpuCodec.open(engine, int8).decodeToDevice(src, 0, dev, 0, 2));
      await attempt(() => GpuCodec.open(engine, fp8).decodeToDevice(src, 0, dev, 0, 1));
      await attempt(() => GpuCodec.open(engine, int8).decodeToDevice(unpinned, 0, dev, 0, 1));
      await attempt(() => GpuCodec.open(engine, int8).decodeToDevice(src, 0, dev, 1, 1));
      await attempt(() => GpuCodec.open(engine, int8).decodeToDevice(src, 0, dev, 4, 2));
      await attempt(() => GpuCodec.open(engine, int8).decodeToDevice(src, 1, dev, 0, 2));
      const back = kv.Region.allocate(fill.byteLength, { pin: true });
      (await engine.submit(new kv.TransferBatch().copy(back, 0, dev, 0, fill.byteLength))).throwIfFailed();
      const cpuWhy = (() => { try { int8.decode(enc, new Uint8Array(int8.decodedBytes * 2), 2); } catch (e) { return e.message; } })();
      await engine.close();
      process.stdout.write(JSON.stringify({ codes, cpuWhy, untouched: back.view().every((b) => b === 0x5a) }));`) as {
      codes: string[];
      cpuWhy: string;
      untouched: boolean;
    };
    expect(r.codes[0]).toBe(`KVTIER_BAD_ARGUMENT: ${r.cpuWhy}`);
    expect(r.codes[0]).toMatch(/: block 1: /);
    expect(r.codes[1]).toMatch(/^KVTIER_BAD_ARGUMENT: block 0: .*another codec/);
    expect(r.codes[2]).toMatch(/^KVTIER_BAD_ARGUMENT: .*pinned/);
    expect(r.codes[3]).toMatch(/^KVTIER_BAD_ARGUMENT: .*multiple of 2/);
    expect(r.codes[4]).toMatch(/^KVTIER_BAD_ARGUMENT: .*fewer than 2/);
    expect(r.codes[5]).toMatch(/^KVTIER_BAD_ARGUMENT: .*fewer than 2 encoded blocks/);
    expect(r.untouched).toBe(true);
    expect(launches().length).toBe(before);
  });

  it('promotes blocks from an encoded file tier into the GPU tier through the GPU decode', () => {
    if (!usable()) return;
    const before = launches().length;
    const r = child(`
      const shape = { layers: 2, tokens: 16, heads: 2, dim: 64 };
      const layout = { dtype: 'bf16', numLayers: 2, blockTokens: 16, kvHeads: 2, headDim: 64 };
      const out = {};
      for (const spec of [{ codec: 'fp8-e4m3' }, { codec: 'kivi2' }]) {
        const codec = BlockCodec.open(spec, layout);
        const bs = codec.decodedBytes;
        const w = await kv.Warehouse.open({ blockBytes: bs, tiers: [
          { kind: 'gpu', bytes: 4 * bs },
          { kind: 'file', dir: process.env.STUB_DIR + '/' + spec.codec, bytes: 32 * codec.encodedBytes,
            codec: { ...spec, layout } },
        ] });
        const tokens = Uint32Array.from({ length: 8 * 16 }, (_, i) => i);
        const keys = kv.chainKeys(tokens, { blockTokens: 16, namespace: spec.codec }).keys();
        const x = toBytes(syntheticKv(shape, 8, 21), 'bf16');
        for (const at of [0, 4]) await w.put(keys.slice(at, at + 4), x.subarray(at * bs, (at + 4) * bs));
        const down = keys.slice(0, 4);
        const tiersBefore = w.lookup(down).tiers;
        const moved = (await w.prefetch(down, { to: 0 })).moved;
        const tiersAfter = w.lookup(down).tiers;
        const dst = kv.Region.allocate(4 * bs, { pin: true });
        const count = (await w.get(down, dst)).count;
        const enc = new Uint8Array(codec.encodedBytes * 4);
        const want = new Uint8Array(4 * bs);
        codec.encode(x.subarray(0, 4 * bs), enc, 4);
        codec.decode(enc, want, 4);
        out[spec.codec] = { tiersBefore, moved, tiersAfter, count, same: Buffer.from(dst.view()).equals(Buffer.from(want)),
          corrupt: w.stats().corrupt };
        await w.close();
        await dst.close();
      }
      process.stdout.write(JSON.stringify(out));`) as Record<
      string,
      { tiersBefore: number[]; moved: number; tiersAfter: number[]; count: number; same: boolean; corrupt: number }
    >;
    for (const codec of ['fp8-e4m3', 'kivi2']) {
      expect(r[codec], codec).toEqual({
        tiersBefore: [1, 1, 1, 1],
        moved: 4,
        tiersAfter: [0, 0, 0, 0],
        count: 4,
        same: true,
        corrupt: 0,
      });
    }
    // One decode launch per promoted block: the GPU path, not the CPU decode and a full copy.
    const ours = launches().slice(before);
    expect(ours.filter((l) => l.startsWith('decode codec=1 blocks=1')).length).toBe(4);
    expect(ours.filter((l) => l.startsWith('decode codec=3 blocks=1')).length).toBe(4);
  });
});
