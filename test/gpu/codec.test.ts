// GPU decode (GpuCodec, native/gpu/kernels.cu) on a real GPU: blocks encoded on the CPU, decoded
// on the GPU from pinned host memory, read back and compared byte for byte with the CPU decoder,
// for every codec and dtype; refusals before the launch leave GPU memory as it was; and a
// Warehouse promoting blocks from an encoded file tier into its GPU tier returns decode(encode(x)).
// Skips without a GPU, saying why (gpu.ts); with one, any difference fails.
import { randomFillSync } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { syntheticKv, toBytes, type KvFloatDtype } from '../../lib/apps/bench/kv-values.js';
import { BlockCodec, type CodecSpec } from '../../lib/core/codec.js';
import { GpuCodec } from '../../lib/core/gpu/codec.js';
import {
  createCopyEngine,
  DeviceRegion,
  GpuCopyEngine,
  isKvtierError,
  Region,
  TransferBatch,
  Warehouse,
} from '../../lib/index.js';
import { tempDir } from '../helpers.js';
import {
  blockBytesOf,
  keysOf,
  kvBlocks,
  layoutOf,
  options,
  roundTrip,
} from '../integration/codec-tier-helpers.js';
import { hasGpu } from './gpu.js';

const SPECS: CodecSpec[] = [
  { codec: 'fp8-e4m3' },
  { codec: 'int8', scales: 'kivi' },
  { codec: 'int8', scales: 'token' },
  { codec: 'kivi4', group: 32 },
  { codec: 'kivi2', group: 16 },
];
const DTYPES: KvFloatDtype[] = ['fp16', 'bf16', 'fp32'];

describe.skipIf(!hasGpu)('GPU decode', () => {
  let engine: GpuCopyEngine;
  beforeAll(() => {
    engine = createCopyEngine({ streams: 2 });
  });
  afterAll(() => engine.close());

  /** Decodes `enc` (blocks of codec) on the GPU at a device offset; returns the bytes there. */
  async function onGpu(codec: BlockCodec, enc: Uint8Array, blocks: number): Promise<Buffer> {
    const src = Region.allocate(enc.length + 3, { pin: true });
    expect(src.pinned).toBe(true);
    src.view().set(enc, 3); // an odd source offset: encoded blocks promise no alignment
    const offset = 4096;
    const bytes = codec.decodedBytes * blocks;
    const dev = DeviceRegion.allocate(offset + bytes);
    const back = Region.allocate(bytes, { pin: true });
    back.view().fill(0xee);
    await GpuCodec.open(engine, codec).decodeToDevice(src, 3, dev, offset, blocks);
    (await engine.submit(new TransferBatch().copy(back, 0, dev, offset, bytes))).throwIfFailed();
    const out = Buffer.from(back.view());
    await Promise.all([src.close(), dev.close(), back.close()]);
    return out;
  }

  it("decodes to the CPU decoder's bytes, every codec and dtype", async () => {
    expect(engine.decodePath).toBe('');
    for (const dtype of DTYPES) {
      for (const spec of SPECS) {
        for (const shape of [
          { layers: 4, tokens: 16, heads: 8, dim: 128 },
          { layers: 3, tokens: 7, heads: 3, dim: 32 },
        ]) {
          const blocks = 3;
          const codec = BlockCodec.open(spec, {
            dtype,
            numLayers: shape.layers,
            blockTokens: shape.tokens,
            kvHeads: shape.heads,
            headDim: shape.dim,
          });
          const enc = new Uint8Array(codec.encodedBytes * blocks);
          codec.encode(
            toBytes(syntheticKv(shape, blocks, 11, { channels: 2, magnitude: 12 }), dtype),
            enc,
            blocks,
          );
          const cpu = Buffer.alloc(codec.decodedBytes * blocks);
          codec.decode(enc, cpu, blocks);
          const gpu = await onGpu(codec, enc, blocks);
          expect(gpu.equals(cpu), `${JSON.stringify(spec)} ${dtype} ${JSON.stringify(shape)}`).toBe(
            true,
          );
        }
      }
    }
  });

  it('decodes every fp8 code and arbitrary int8 codes as the CPU does', async () => {
    for (const dtype of DTYPES) {
      const shape = { layers: 2, tokens: 16, heads: 2, dim: 64 };
      const layout = { dtype, numLayers: 2, blockTokens: 16, kvHeads: 2, headDim: 64 };
      for (const spec of [{ codec: 'fp8-e4m3' }, { codec: 'int8' }] as CodecSpec[]) {
        const codec = BlockCodec.open(spec, layout);
        const enc = new Uint8Array(codec.encodedBytes);
        codec.encode(toBytes(syntheticKv(shape, 1, 5), dtype), enc);
        const codesAt = codec.encodedBytes - 2 * 2 * 16 * 2 * 64;
        randomFillSync(enc, codesAt); // every code, 0x7F and 0x80 included; scales left finite
        const cpu = Buffer.alloc(codec.decodedBytes);
        codec.decode(enc, cpu);
        expect((await onGpu(codec, enc, 1)).equals(cpu), `${spec.codec} ${dtype}`).toBe(true);
      }
    }
  });

  it('refuses a block another codec wrote, an unpinned source and a misaligned target, GPU memory untouched', async () => {
    const layout = { dtype: 'fp16', numLayers: 2, blockTokens: 16, kvHeads: 2, headDim: 64 };
    const int8 = BlockCodec.open({ codec: 'int8' }, layout);
    const fp8 = BlockCodec.open({ codec: 'fp8-e4m3' }, layout);
    const enc = new Uint8Array(int8.encodedBytes * 2);
    int8.encode(
      toBytes(syntheticKv({ layers: 2, tokens: 16, heads: 2, dim: 64 }, 2, 1), 'fp16'),
      enc,
      2,
    );
    enc[int8.encodedBytes + 5] = 1; // block 1 claims fp8
    const src = Region.allocate(enc.length, { pin: true });
    src.view().set(enc);
    const dev = DeviceRegion.allocate(int8.decodedBytes * 2 + 2);
    const fill = Region.allocate(int8.decodedBytes * 2 + 2, { pin: true });
    randomFillSync(fill.view());
    (
      await engine.submit(new TransferBatch().copy(dev, 0, fill, 0, fill.byteLength))
    ).throwIfFailed();
    const refused = async (p: Promise<void>, pattern: RegExp): Promise<void> => {
      const e = await p.then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(isKvtierError(e, 'KVTIER_BAD_ARGUMENT'), String(e)).toBe(true);
      expect((e as Error).message).toMatch(pattern);
    };
    await refused(GpuCodec.open(engine, int8).decodeToDevice(src, 0, dev, 0, 2), /^block 1: /);
    await refused(GpuCodec.open(engine, fp8).decodeToDevice(src, 0, dev, 0, 1), /another codec/);
    await refused(GpuCodec.open(engine, int8).decodeToDevice(src, 0, dev, 1, 1), /multiple of 2/);
    await refused(GpuCodec.open(engine, int8).decodeToDevice(src, 0, dev, 4, 2), /fewer than 2/);
    const unpinned = Region.allocate(enc.length, { pin: false });
    unpinned.view().set(enc);
    await refused(GpuCodec.open(engine, int8).decodeToDevice(unpinned, 0, dev, 0, 1), /pinned/);
    const back = Region.allocate(fill.byteLength, { pin: true });
    (
      await engine.submit(new TransferBatch().copy(back, 0, dev, 0, fill.byteLength))
    ).throwIfFailed();
    expect(Buffer.from(back.view()).equals(Buffer.from(fill.view()))).toBe(true);
    await Promise.all([src.close(), dev.close(), fill.close(), back.close(), unpinned.close()]);
  });

  it('promotes blocks from an encoded file tier into the GPU tier as decode(encode(x))', async () => {
    for (const spec of [{ codec: 'fp8-e4m3' }, { codec: 'kivi2' }] as CodecSpec[]) {
      const dir = tempDir('kvtier-gpu-codec-');
      const dtype: KvFloatDtype = 'bf16';
      const bs = blockBytesOf(dtype);
      const base = options(dir.path, spec, dtype, 32);
      const w = await Warehouse.open({
        ...base,
        tiers: [{ kind: 'gpu', bytes: 4 * bs }, ...base.tiers.filter((t) => t.kind === 'file')],
      });
      const keys = keysOf(8, `gpu-${spec.codec}`);
      const x = kvBlocks(8, dtype, 21);
      for (const at of [0, 4]) {
        const part = x.subarray(at * bs, (at + 4) * bs);
        expect((await w.put(keys.slice(at, at + 4), part)).stored).toBe(4);
      }
      // The first four were pushed down into the file tier; bring them back up to the GPU.
      const down = keys.slice(0, 4);
      expect(w.lookup(down).tiers).toEqual([1, 1, 1, 1]);
      expect((await w.prefetch(down, { to: 0 })).moved).toBe(4);
      expect(w.lookup(down).tiers).toEqual([0, 0, 0, 0]);
      const dst = Region.allocate(4 * bs, { pin: true });
      expect((await w.get(down, dst)).count).toBe(4);
      const codec = BlockCodec.open(spec, layoutOf(dtype));
      const want = roundTrip(codec, x.subarray(0, 4 * bs), 4);
      expect(Buffer.from(dst.view()).equals(want), spec.codec).toBe(true);
      expect(w.stats().corrupt).toBe(0);
      await w.close();
      await dst.close();
      dir.remove();
    }
  });
});
