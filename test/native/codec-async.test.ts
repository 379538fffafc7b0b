// BlockCodec's asynchronous calls on kvtier's codec threads (native/codec/codec_pool.h): the same
// bytes and refusals as the synchronous calls, buffers held while in flight, teardown with calls
// out; and `kvtier bench codec`'s report.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { BENCH_CODECS, runCodecBench } from '../../lib/apps/bench/codec-bench.js';
import { syntheticKv, toBytes } from '../../lib/apps/bench/kv-values.js';
import { BlockCodec, codecIsa, codecThreads, setCodecThreads } from '../../lib/core/codec.js';
import { KvtierError } from '../../lib/core/errors.js';
import { native } from '../../lib/core/native.js';

import { arbCase, codecs, layoutOf } from './codec-cases.js';

/** The KvtierError a call throws or rejects with, or a failure when it succeeds. */
async function refusal(fn: () => unknown): Promise<KvtierError> {
  try {
    await fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KvtierError);
    return e as KvtierError;
  }
  throw new Error('no error');
}

describe('codec async calls on the codec threads', () => {
  it('encode and decode the same bytes as the synchronous calls, batches split across 3 threads', async () => {
    setCodecThreads(3);
    expect(codecThreads()).toBe(3);
    await fc.assert(
      fc.asyncProperty(arbCase, fc.integer({ min: 1, max: 7 }), async ({ spec, shape, dtype, seed, magnitude }, blocks) => {
        const codec = BlockCodec.open(spec, layoutOf(shape, dtype));
        const src = toBytes(syntheticKv(shape, blocks, seed, { channels: 2, magnitude }), dtype);
        const encSync = new Uint8Array(codec.encodedBytes * blocks);
        codec.encode(src, encSync, blocks);
        const encAsync = new Uint8Array(codec.encodedBytes * blocks).fill(0xa5);
        await codec.encodeAsync(src, encAsync, blocks);
        expect(Buffer.from(encAsync).equals(Buffer.from(encSync))).toBe(true);
        const decSync = new Uint8Array(src.length);
        codec.decode(encSync, decSync, blocks);
        for (const isa of ['auto', 'scalar'] as const) {
          const decAsync = new Uint8Array(src.length).fill(0xa5);
          await codec.decodeAsync(encAsync, decAsync, blocks, { isa });
          expect(Buffer.from(decAsync).equals(Buffer.from(decSync))).toBe(true);
        }
      }),
      { numRuns: 60 },
    );
  });

  it('settles many concurrent calls, each with its own bytes', async () => {
    setCodecThreads(2);
    const shape = { layers: 2, tokens: 8, heads: 2, dim: 32 };
    const codecsOpen = codecs.map((c) => BlockCodec.open({ codec: c }, layoutOf(shape, 'bf16')));
    const jobs = Array.from({ length: 24 }, (_, i) => {
      const codec = codecsOpen[i % codecsOpen.length]!;
      const src = toBytes(syntheticKv(shape, 3, 100 + i), 'bf16');
      const want = new Uint8Array(codec.encodedBytes * 3);
      codec.encode(src, want, 3);
      const got = new Uint8Array(want.length);
      return { codec, src, want, got, done: codec.encodeAsync(src, got, 3) };
    });
    await Promise.all(jobs.map((j) => j.done));
    for (const j of jobs) expect(Buffer.from(j.got).equals(Buffer.from(j.want))).toBe(true);
    const back = await Promise.all(
      jobs.map(async (j) => {
        const out = new Uint8Array(j.src.length);
        await j.codec.decodeAsync(j.got, out, 3);
        const ref = new Uint8Array(j.src.length);
        j.codec.decode(j.want, ref, 3);
        return Buffer.from(out).equals(Buffer.from(ref));
      }),
    );
    expect(back.every(Boolean)).toBe(true);
  });

  it('holds the source while in flight: the caller dropping it and a collection change nothing', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const shape = { layers: 32, tokens: 16, heads: 8, dim: 128 }; // 2 MiB blocks
    const codec = BlockCodec.open({ codec: 'kivi2' }, layoutOf(shape, 'bf16'));
    const want = new Uint8Array(codec.encodedBytes * 4);
    codec.encode(toBytes(syntheticKv(shape, 4, 5), 'bf16'), want, 4);
    // The native pool itself (encodeAsync's own frame would hold the buffers too), on the slow
    // scalar path so the calls are still running when the collector runs: src exists only inside
    // start(), so only the native call's reference keeps it alive.
    const pool = new (native().NativeCodecPool)({ threads: 2 });
    const start = (): [Promise<void>, Uint8Array] => {
      const src = toBytes(syntheticKv(shape, 4, 5), 'bf16');
      const dst = new Uint8Array(codec.encodedBytes * 4);
      return [pool.run('encode', codec.params, src, dst, 4, 'scalar'), dst];
    };
    const calls = [start(), start(), start()];
    for (let i = 0; i < 5; i++) {
      gc();
      new Uint8Array(1 << 23).fill(0xcc); // reuse whatever memory was freed
    }
    await Promise.all(calls.map(([p]) => p));
    for (const [, got] of calls) expect(Buffer.from(got).equals(Buffer.from(want))).toBe(true);
    pool.close();
  });

  it('settles the calls out when the pool is replaced, and a worker thread terminated with calls in flight leaves this thread working', async () => {
    setCodecThreads(2);
    const shape = { layers: 4, tokens: 16, heads: 8, dim: 128 };
    const codec = BlockCodec.open({ codec: 'fp8-e4m3' }, layoutOf(shape, 'fp16'));
    const src = toBytes(syntheticKv(shape, 6, 8), 'fp16');
    const want = new Uint8Array(codec.encodedBytes * 6);
    codec.encode(src, want, 6);
    const outs = [0, 1, 2, 3].map(() => new Uint8Array(want.length));
    const pending = outs.map((o) => codec.encodeAsync(src, o, 6));
    setCodecThreads(1); // closes the pool the calls are queued on: they finish there
    expect(codecThreads()).toBe(1);
    await Promise.all(pending);
    for (const o of outs) expect(Buffer.from(o).equals(Buffer.from(want))).toBe(true);

    const worker = new Worker(new URL('./fixtures/codec-worker.mjs', import.meta.url));
    await new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
    });
    expect(await worker.terminate()).toBe(1);
    const again = new Uint8Array(want.length);
    await codec.encodeAsync(src, again, 6);
    expect(Buffer.from(again).equals(Buffer.from(want))).toBe(true);
  });

  it('refuses as the synchronous calls do: the same codes and messages, a refused decode leaving dst untouched', async () => {
    setCodecThreads(3);
    const s = { layers: 1, tokens: 4, heads: 2, dim: 8 };
    for (const codec of codecs) {
      const c = BlockCodec.open({ codec, ...(codec.startsWith('kivi') ? { group: 4 } : {}) }, layoutOf(s, 'fp32'));
      const n = c.decodedBytes / 4;
      // Five blocks, a NaN in block 3 and an infinity in block 4: the first refused block is named.
      const x = new Float32Array(5 * n).fill(0.5);
      x[3 * n + 7] = NaN;
      x[4 * n + 1] = -Infinity;
      const syncErr = await refusal(() => c.encode(x, new Uint8Array(5 * c.encodedBytes), 5));
      const asyncErr = await refusal(() => c.encodeAsync(x, new Uint8Array(5 * c.encodedBytes), 5));
      expect(syncErr.code).toBe('KVTIER_BAD_ARGUMENT');
      expect(asyncErr.code).toBe(syncErr.code);
      expect(asyncErr.message).toBe(syncErr.message);
      expect(asyncErr.message).toMatch(/^block 3: .*not finite/);

      // A second block written by another codec: refused before the first block is decoded.
      const good = new Uint8Array(2 * c.encodedBytes);
      c.encode(new Float32Array(2 * n).fill(0.25), good, 2);
      const other = BlockCodec.open({ codec: codec === 'int8' ? 'fp8-e4m3' : 'int8' }, layoutOf(s, 'fp32'));
      const foreign = new Uint8Array(other.encodedBytes);
      other.encode(new Float32Array(n).fill(0.25), foreign);
      good.set(foreign.subarray(0, 32), c.encodedBytes);
      const dst = new Uint8Array(2 * c.decodedBytes).fill(0x5a);
      const dSync = await refusal(() => c.decode(good, dst, 2));
      const dAsync = await refusal(() => c.decodeAsync(good, dst, 2));
      expect(dAsync.code).toBe('KVTIER_BAD_ARGUMENT');
      expect(dAsync.message).toBe(dSync.message);
      expect(dAsync.message).toMatch(/^block 1: the block was encoded with another codec/);
      expect(dst.every((b) => b === 0x5a)).toBe(true);

      const small = await refusal(() => c.decodeAsync(good, dst.subarray(1), 2));
      expect(small.code).toBe('KVTIER_BAD_ARGUMENT');
      expect(small.message).toMatch(/dst holds/);
      const overlap = await refusal(() => c.encodeAsync(new Uint8Array(good.buffer), good.subarray(0, c.encodedBytes), 1));
      expect(overlap.code).toBe('KVTIER_BAD_ARGUMENT');
    }
    const k = BlockCodec.open({ codec: 'kivi2', group: 8 }, layoutOf(s, 'fp32'));
    const big = new Float32Array(2 * (k.decodedBytes / 4)).fill(1);
    big[k.decodedBytes / 4 + 3] = 1e6;
    const e = await refusal(() => k.encodeAsync(big, new Uint8Array(2 * k.encodedBytes), 2));
    expect(e.code).toBe('KVTIER_BAD_ARGUMENT');
    expect(e.message).toMatch(/^block 1: .*beyond \+-65504/);
    await refusal(() => k.encodeAsync('nope' as unknown as Uint8Array, new Uint8Array(k.encodedBytes)));
    expect(() => setCodecThreads(0)).toThrow(/codec threads/);
  });
});

describe('kvtier bench codec', () => {
  it('reports every codec: sizes as the codec computes them, every speed measured, the async thread count', async () => {
    setCodecThreads(2);
    const o = { dtype: 'fp16' as const, layers: 2, tokens: 4, heads: 2, dim: 64, group: 32, blocks: 3, reps: 3, accuracyBlocks: 2, accuracyLayers: 1, queries: 2 };
    const r = await runCodecBench(o);
    expect(r.threads).toBe(2);
    expect(r.isa).toBe(codecIsa());
    expect(r.speed.map((s) => s.codec)).toEqual(BENCH_CODECS.map((c) => c.name));
    for (const [i, row] of r.speed.entries()) {
      const c = BlockCodec.open(BENCH_CODECS[i]!.spec(o.group), layoutOf(o, 'fp16'));
      expect(row.decodedBlockBytes).toBe(c.decodedBytes);
      expect(row.encodedBlockBytes).toBe(c.encodedBytes);
      for (const v of [row.encodeGBps, row.encodeScalarGBps, row.decodeGBps, row.memcpyGBps, row.encodeAsyncGBps, row.decodeAsyncGBps]) {
        expect(Number.isFinite(v) && v > 0).toBe(true);
      }
      expect(row.decodeVsMemcpy).toBeCloseTo(row.decodeGBps / row.memcpyGBps, 12);
    }
    expect(r.accuracy).toHaveLength(BENCH_CODECS.length);
  });
});
