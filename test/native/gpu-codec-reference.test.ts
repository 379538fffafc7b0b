// The GPU decode kernels' arithmetic (native/gpu/codec_decode.h), built for the CPU and run here,
// against native/codec's decoder: the same bytes for every codec, dtype and random shape, for
// every fp8 code, extreme scales and arbitrary kivi payloads, and docs/codecs.md's test vectors;
// and the same refusals. The kernels compile the same header with __fmul_rn/__fadd_rn, so this is
// what can be checked of them without a GPU (test/gpu/codec.test.ts runs them on one).
import { readFileSync } from 'node:fs';

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { fromBytes, syntheticKv, toBytes } from '../../lib/apps/bench/kv-values.js';
import { BlockCodec, type CodecSpec } from '../../lib/core/codec.js';
import { decodeLikeGpu } from '../../lib/core/gpu/codec.js';
import { badArgument } from '../helpers.js';

import { arbCase, dtypes, layoutOf } from './codec-cases.js';

function same(codec: BlockCodec, enc: Uint8Array, blocks = 1): void {
  const cpu = new Uint8Array(codec.decodedBytes * blocks);
  const scalar = new Uint8Array(codec.decodedBytes * blocks);
  const gpu = new Uint8Array(codec.decodedBytes * blocks).fill(0xee);
  codec.decode(enc, cpu, blocks);
  codec.decode(enc, scalar, blocks, { isa: 'scalar' });
  decodeLikeGpu(codec, enc, gpu, blocks);
  expect(Buffer.from(gpu).equals(Buffer.from(scalar))).toBe(true);
  expect(Buffer.from(gpu).equals(Buffer.from(cpu))).toBe(true);
}

describe('GPU decode arithmetic on the CPU', () => {
  it('gives the CPU decoder\'s bytes for every codec, dtype and random shape', () => {
    fc.assert(
      fc.property(arbCase, ({ spec, shape, dtype, blocks, seed, magnitude }) => {
        const codec = BlockCodec.open(spec, layoutOf(shape, dtype));
        const src = toBytes(syntheticKv(shape, blocks, seed, { channels: 2, magnitude }), dtype);
        const enc = new Uint8Array(codec.encodedBytes * blocks);
        codec.encode(src, enc, blocks);
        same(codec, enc, blocks);
      }),
      { numRuns: 150 },
    );
  });

  it('gives the CPU decoder\'s bytes for every fp8 code, extreme scales and arbitrary kivi payloads', () => {
    for (const dtype of dtypes) {
      const fshape = { layers: 1, tokens: 8, heads: 4, dim: 24 };
      const fp8 = BlockCodec.open({ codec: 'fp8-e4m3' }, layoutOf(fshape, dtype));
      const enc = new Uint8Array(fp8.encodedBytes);
      fp8.encode(toBytes(syntheticKv(fshape, 1, 7), dtype), enc);
      const codesAt = 32 + 4 * 8;
      for (let i = 0; i < 2 * 8 * 4 * 24; i++) enc[codesAt + i] = (i * 7) & 0xff;
      const dv = new DataView(enc.buffer);
      for (const [j, s] of [1e-38, 3.4e38 / 448, 1, 2 ** -20, 3e38, 2e36, 1e-45, -0.75].entries())
        dv.setFloat32(32 + 4 * j, s, true);
      same(fp8, enc);

      for (const scales of ['kivi', 'token'] as const) {
        const shape = { layers: 2, tokens: 8, heads: 2, dim: 16 };
        const int8 = BlockCodec.open({ codec: 'int8', scales }, layoutOf(shape, dtype));
        const e2 = new Uint8Array(int8.encodedBytes);
        int8.encode(toBytes(syntheticKv(shape, 1, 7), dtype), e2);
        const scaleCount = scales === 'kivi' ? 2 * (2 * 16 + 8 * 2) : 2 * 2 * 8 * 2;
        const d2 = new DataView(e2.buffer);
        for (let j = 0; j < scaleCount; j++)
          d2.setFloat32(32 + 4 * j, [1e-40, 3e38, 700, 1e-3, -2.5][j % 5] as number, true);
        for (let i = 32 + 4 * scaleCount; i < e2.length; i++) e2[i] = (i * 37) & 0xff;
        same(int8, e2);
      }

      // Every byte after the header arbitrary: fp16 parameters of every kind (subnormal, infinite,
      // NaN: the CPU's NaN bits, see docs/codecs.md for the GPU's) and every code.
      for (const [bits, group] of [[2, 8], [4, 16], [2, 4], [4, 1]] as const) {
        const kshape = { layers: 2, tokens: 8, heads: 2, dim: 32 };
        const kivi = BlockCodec.open(
          { codec: bits === 2 ? 'kivi2' : 'kivi4', group },
          layoutOf(kshape, dtype),
        );
        const e3 = new Uint8Array(kivi.encodedBytes);
        kivi.encode(toBytes(syntheticKv(kshape, 1, 9), dtype), e3);
        for (let i = 32; i < e3.length; i++) e3[i] = (i * 151 + (i >> 8) * 17) & 0xff;
        same(kivi, e3);
      }
    }
  });

  it('decodes docs/codecs.md\'s test vectors to their exact values', () => {
    const vectors: { spec: CodecSpec; dtype: 'fp16' | 'bf16' | 'fp32'; shape: number[]; hex: string; y: number[] }[] = [
      { spec: { codec: 'fp8-e4m3' }, dtype: 'fp32', shape: [1, 1, 1, 4], hex: '4b565443010103000100000001000000010000000400000000000000100000000000803f2549123c7ef63e006e767a7e', y: [448, -224, 1.75, 0, 1, 2, 2.857142925262451, 4] },
      { spec: { codec: 'int8', scales: 'token' }, dtype: 'fp16', shape: [1, 1, 1, 4], hex: '4b565443010201010100000001000000010000000400000000000000100000000402013c0000803f7fc020007f40ff00', y: [1, -0.50390625, 0.251953125, 0, 127, 64, -1, 0] },
      { spec: { codec: 'int8', scales: 'kivi' }, dtype: 'bf16', shape: [1, 2, 1, 2], hex: '4b565443010202020100000002000000010000000200000000000000180000000402013c0402813d0402813c0683c13c7f8140407f7f812a', y: [1, -8, 0.50390625, 4.03125, 2, 2, -3, 0.9921875] },
      { spec: { codec: 'kivi2', group: 4 }, dtype: 'fp16', shape: [1, 2, 1, 4], hex: '4b5654430103010001000000020000000100000004000000040000001c000000003c00005635003c5635003c003c0000563900bc00490049f00fe4e4', y: [0, 1, 2, 3, 3, 2, 1, 0, -1, -0.3330078125, 0.333984375, 1.0009765625, 10, 20, 30, 40] },
      { spec: { codec: 'kivi4', group: 2 }, dtype: 'fp16', shape: [1, 1, 1, 4], hex: '4b5654430104010001000000010000000100000004000000020000001c000000000000000000003e000000c000000040d41e662e563900c50000f00f', y: [0, 1.5, -2, 2, 0.0999755859375, 0.199951171875, 5.00390625, -5] },
    ];
    for (const v of vectors) {
      const [L, T, H, D] = v.shape as [number, number, number, number];
      const c = BlockCodec.open(v.spec, { dtype: v.dtype, numLayers: L, blockTokens: T, kvHeads: H, headDim: D });
      const dec = new Uint8Array(c.decodedBytes);
      decodeLikeGpu(c, Buffer.from(v.hex, 'hex'), dec);
      expect([...fromBytes(dec, v.dtype)]).toEqual(v.y);
    }
  });

  it('is what the embedded PTX runs: decode entries, IEEE round-to-nearest, no FMA, no flush to zero', () => {
    // kernels_ptx.h is kernels.cu compiled (scripts/gen-ptx.sh --check proves it where nvcc is).
    const ptx = readFileSync(new URL('../../native/gpu/kernels_ptx.h', import.meta.url), 'utf8');
    for (const entry of ['kvtier_decode_fp8', 'kvtier_decode_int8', 'kvtier_decode_kivi']) {
      expect(ptx).toContain(`.visible .entry ${entry}(`);
    }
    expect(ptx).toMatch(/mul\.rn\.f32/);
    expect(ptx).toMatch(/add\.rn\.f32/);
    expect(ptx).not.toMatch(/\bfma\.|\.ftz|\.approx/);
  });

  it('refuses what the CPU decoder refuses, leaving dst as it was', () => {
    const shape = { layers: 1, tokens: 4, heads: 2, dim: 8 };
    const int8 = BlockCodec.open({ codec: 'int8' }, layoutOf(shape, 'fp16'));
    const fp8 = BlockCodec.open({ codec: 'fp8-e4m3' }, layoutOf(shape, 'fp16'));
    const enc = new Uint8Array(int8.encodedBytes * 2);
    int8.encode(toBytes(syntheticKv(shape, 2, 3), 'fp16'), enc, 2);
    const dst = new Uint8Array(int8.decodedBytes * 2).fill(0x5a);
    const damaged = enc.slice();
    damaged[int8.encodedBytes + 6] = 3; // block 1 says fp32
    const why = badArgument(() => decodeLikeGpu(int8, damaged, dst, 2));
    expect(why).toBe(badArgument(() => int8.decode(damaged, new Uint8Array(dst.length), 2)));
    expect(why).toMatch(/^block 1: /);
    expect(badArgument(() => decodeLikeGpu(fp8, enc, dst, 1))).toMatch(/another codec/);
    expect(badArgument(() => decodeLikeGpu(int8, enc, dst, 3))).toMatch(/less than 3 blocks/);
    expect(dst.every((b) => b === 0x5a)).toBe(true);
  });
});
