// KV block codecs (docs/codecs.md): round trips over random shapes within each codec's error
// bound, the SIMD and scalar decoders agreeing bit for bit, the header refusing a wrong decode,
// codecs refusing layouts they cannot fit, and fixed test vectors with their exact bytes.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import {
  dtypeBytes,
  fromBytes,
  syntheticKv,
  toBytes,
  type KvFloatDtype,
} from '../../lib/apps/bench/kv-values.js';
import {
  BlockCodec,
  codecIsa,
  type CodecName,
  type CodecSpec,
} from '../../lib/core/codec.js';
import { KvtierError } from '../../lib/core/errors.js';
import { describeKvLayout } from '../../lib/layout/index.js';

import { arbCase, codecs, dtypes, layoutOf, type Shape } from './codec-cases.js';

/** Output rounding of the decoded dtype, relative. */
const OUT_EPS: Record<KvFloatDtype, number> = { fp16: 2 ** -11, bf16: 2 ** -8, fp32: 0 };
const OUT_ABS: Record<KvFloatDtype, number> = { fp16: 2 ** -24, bf16: 0, fp32: 0 };

/** Element index of (layer, kv, token, head, dim) in NHD packing. */
const at = (s: Shape, l: number, kv: number, t: number, h: number, d: number): number =>
  (((l * 2 + kv) * s.tokens + t) * s.heads + h) * s.dim + d;

/**
 * The largest allowed |decoded - original| per element: each codec's bound from docs/codecs.md,
 * computed from the original values' group ranges, plus the output dtype's rounding.
 */
function bounds(spec: CodecSpec, s: Shape, x: Float32Array, dtype: KvFloatDtype): Float64Array {
  const out = new Float64Array(x.length);
  const groups: number[][] = []; // element indices of each scale group
  const push = (g: number[]): void => void groups.push(g);
  for (let l = 0; l < s.layers; l++)
    for (let kv = 0; kv < 2; kv++) {
      const perChannel =
        kv === 0 && (spec.codec !== 'int8' || spec.scales !== 'token') && spec.codec !== 'fp8-e4m3';
      if (spec.codec === 'fp8-e4m3') {
        for (let h = 0; h < s.heads; h++) {
          const g: number[] = [];
          for (let t = 0; t < s.tokens; t++)
            for (let d = 0; d < s.dim; d++) g.push(at(s, l, kv, t, h, d));
          push(g);
        }
      } else if (perChannel) {
        for (let h = 0; h < s.heads; h++)
          for (let d = 0; d < s.dim; d++)
            push(Array.from({ length: s.tokens }, (_, t) => at(s, l, kv, t, h, d)));
      } else {
        const G = spec.codec === 'int8' ? s.dim : (spec.group ?? 32);
        for (let t = 0; t < s.tokens; t++)
          for (let h = 0; h < s.heads; h++)
            for (let d0 = 0; d0 < s.dim; d0 += G)
              push(Array.from({ length: G }, (_, j) => at(s, l, kv, t, h, d0 + j)));
      }
    }
  for (const g of groups) {
    const v = g.map((i) => x[i] as number);
    const lo = Math.min(...v);
    const hi = Math.max(...v);
    const amax = Math.max(Math.abs(lo), Math.abs(hi));
    for (const i of g) {
      const xi = Math.abs(x[i] as number);
      let b: number;
      if (spec.codec === 'fp8-e4m3') {
        const scale = amax / 448;
        b = 2 ** -4 * xi + 2 ** -10 * scale; // half an e4m3 ulp, or half a subnormal step
      } else if (spec.codec === 'int8') {
        b = amax / 127 / 2;
      } else {
        const levels = spec.codec === 'kivi2' ? 3 : 15;
        const s16 = ((hi - lo + 2 ** -10 * Math.abs(lo)) / levels) * (1 + 2 ** -8) + 2 ** -23;
        b = s16 / 2 + 2 ** -10 * Math.abs(lo);
      }
      out[i] = b + (xi + b) * OUT_EPS[dtype] + OUT_ABS[dtype] + amax * 1e-6;
    }
  }
  return out;
}

describe('codec round trips', () => {
  it(`decodes every codec and dtype within its bound, SIMD (${codecIsa()}) encode and decode equal to scalar`, () => {
    fc.assert(
      fc.property(arbCase, ({ spec, shape, dtype, blocks, seed, magnitude }) => {
        const codec = BlockCodec.open(spec, layoutOf(shape, dtype));
        const n = shape.layers * 2 * shape.tokens * shape.heads * shape.dim;
        expect(codec.decodedBytes).toBe(n * dtypeBytes(dtype));
        // Values as the dtype holds them: the reference is what was stored, not the float drawn.
        const x = fromBytes(
          toBytes(syntheticKv(shape, blocks, seed, { channels: 2, magnitude }), dtype),
          dtype,
        );
        const src = toBytes(x, dtype);
        const enc = new Uint8Array(codec.encodedBytes * blocks);
        codec.encode(src, enc, blocks);
        const encScalar = new Uint8Array(codec.encodedBytes * blocks).fill(0xee);
        codec.encode(src, encScalar, blocks, { isa: 'scalar' });
        expect(Buffer.from(enc).equals(Buffer.from(encScalar))).toBe(true);
        const fast = new Uint8Array(src.length);
        const scalar = new Uint8Array(src.length).fill(0xee);
        codec.decode(enc, fast, blocks);
        codec.decode(enc, scalar, blocks, { isa: 'scalar' });
        expect(Buffer.from(fast).equals(Buffer.from(scalar))).toBe(true);
        const y = fromBytes(fast, dtype);
        for (let b = 0; b < blocks; b++) {
          const xb = x.subarray(b * n, (b + 1) * n);
          const bound = bounds(spec, shape, xb, dtype);
          for (let i = 0; i < n; i++) {
            const err = Math.abs((y[b * n + i] as number) - (xb[i] as number));
            if (!(err <= (bound[i] as number))) {
              throw new Error(`block ${b} element ${i}: ${xb[i]} decoded as ${y[b * n + i]}`);
            }
          }
        }
      }),
      { numRuns: 150 },
    );
  });

  it('SIMD and scalar decoders agree on every fp8 code, extreme int8 scales and arbitrary kivi payloads', () => {
    // One fp16 block whose fp8 codes are all 256 bytes (written over an encoded block: the
    // decoders must agree on any payload, 0x7F included), and an int8 block with scales at the
    // edges of fp32 (subnormal products, results that overflow fp16 to infinity).
    for (const dtype of dtypes) {
      // Rows of 24: a 16-code SIMD step and a scalar tail. The scales include ones whose 256-fold
      // overflows (3e38, 2e36: the SIMD path's fused multiply is not taken) and subnormal ones.
      const fshape = { layers: 1, tokens: 8, heads: 4, dim: 24 };
      const fp8 = BlockCodec.open({ codec: 'fp8-e4m3' }, layoutOf(fshape, dtype));
      const enc = new Uint8Array(fp8.encodedBytes);
      fp8.encode(toBytes(syntheticKv(fshape, 1, 7), dtype), enc);
      const codes = 32 + 4 * 8;
      for (let i = 0; i < 2 * 8 * 4 * 24; i++) enc[codes + i] = (i * 7) & 0xff;
      const dv = new DataView(enc.buffer);
      for (const [j, s] of [1e-38, 3.4e38 / 448, 1, 2 ** -20, 3e38, 2e36, 1e-45, -0.75].entries())
        dv.setFloat32(32 + 4 * j, s, true);
      const a = new Uint8Array(fp8.decodedBytes);
      const b = new Uint8Array(fp8.decodedBytes);
      fp8.decode(enc, a);
      fp8.decode(enc, b, 1, { isa: 'scalar' });
      expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);

      const shape = { layers: 1, tokens: 8, heads: 2, dim: 16 };
      const src = toBytes(syntheticKv(shape, 1, 7), dtype);
      const int8 = BlockCodec.open({ codec: 'int8', scales: 'kivi' }, layoutOf(shape, dtype));
      const e2 = new Uint8Array(int8.encodedBytes);
      int8.encode(src, e2);
      const scaleCount = 2 * 16 + 8 * 2;
      const d2 = new DataView(e2.buffer);
      for (let j = 0; j < scaleCount; j++) d2.setFloat32(32 + 4 * j, [1e-40, 3e38, 700, 1e-3][j % 4] as number, true);
      for (let i = 32 + 4 * scaleCount; i < e2.length; i++) e2[i] = (i * 37) & 0xff;
      const c = new Uint8Array(int8.decodedBytes);
      const d = new Uint8Array(int8.decodedBytes);
      int8.decode(e2, c);
      int8.decode(e2, d, 1, { isa: 'scalar' });
      expect(Buffer.from(c).equals(Buffer.from(d))).toBe(true);

      // kivi with every byte after the header arbitrary: fp16 parameters of every kind (subnormal,
      // infinite, NaN) and every code, for groups of 8 and 16 (the SIMD path) and 4 (scalar).
      for (const [bits, group] of [[2, 8], [4, 16], [2, 4]] as const) {
        const kshape = { layers: 2, tokens: 8, heads: 2, dim: 32 };
        const kivi = BlockCodec.open({ codec: bits === 2 ? 'kivi2' : 'kivi4', group }, layoutOf(kshape, dtype));
        const e3 = new Uint8Array(kivi.encodedBytes);
        kivi.encode(toBytes(syntheticKv(kshape, 1, 9), dtype), e3);
        for (let i = 32; i < e3.length; i++) e3[i] = (i * 151 + (i >> 8) * 17) & 0xff;
        const f = new Uint8Array(kivi.decodedBytes);
        const g = new Uint8Array(kivi.decodedBytes);
        kivi.decode(e3, f);
        kivi.decode(e3, g, 1, { isa: 'scalar' });
        expect(Buffer.from(f).equals(Buffer.from(g))).toBe(true);
      }
    }
  });
});

/**
 * Values where rounding decides. At scale 1 (a group whose amax is 448 for fp8, 127 for int8)
 * these are ties between two codes, subnormal e4m3 steps and their midpoints; times a power of
 * two they stay ties, as the scale scales with them.
 */
const FP8_TIES = [448, 1.0625, -1.1875, 1.1875, 2 ** -10, 3 * 2 ** -10, -(5 * 2 ** -10), 2 ** -6 - 2 ** -10, 2 ** -6 - 2 ** -11, 0.5625, 17, 19, -0, 0, 440, 444, 436, 2 ** -9];
const INT8_TIES = [127, 0.5, 1.5, 2.5, -2.5, -0.5, 126.5, -126.5, 3.5, -0, 0, 64.5];
const EXTREMES = [65504, -65504, 3e38, -3e38, 1e-30, 2 ** -24, 3 * 2 ** -24, 1.17549435e-38, 1e-45, -1e-45, 2 ** -126, 1];

describe('SIMD encoders', () => {
  it('write the scalar encoder\'s bytes on ties, subnormals, saturation, ±0 and the dtypes\' extremes', () => {
    let compared = 0;
    let refused = 0;
    for (const dtype of dtypes) {
      for (const dim of [8, 16, 20, 40]) {
        const shape = { layers: 2, tokens: 5, heads: 3, dim };
        const n = 2 * 2 * 5 * 3 * dim;
        for (const [k, shift] of [0, -12, 9, 40].entries()) {
          // Each (layer, K or V, head) gets a theme: fp8 ties, int8 ties (every row and every
          // channel reaching 127), extremes, zeros of both signs, or the smallest values.
          const x = new Float32Array(n);
          for (let i = 0; i < n; i++) {
            const d = i % dim;
            const h = Math.floor(i / dim) % 3;
            const t = Math.floor(i / (dim * 3)) % 5;
            const slab = Math.floor(i / (dim * 15));
            const theme = (slab * 3 + h + k) % 5;
            const pick = (set: number[]): number => set[(i * 7 + k) % set.length] as number;
            if (theme === 0) x[i] = (t === 0 && d === 0 ? 448 : pick(FP8_TIES)) * 2 ** shift;
            else if (theme === 1) x[i] = (t === 0 || d === 0 ? (i % 2 ? 127 : -127) : pick(INT8_TIES)) * 2 ** shift;
            else if (theme === 2) x[i] = pick(EXTREMES);
            else if (theme === 3) x[i] = i % 3 === 0 ? -0 : 0;
            else x[i] = pick(EXTREMES) * 2 ** -100;
          }
          // As the dtype holds them, with beyond-range values saturated to its largest finite one.
          const max = dtype === 'fp16' ? 65504 : dtype === 'bf16' ? 3.3895313892515355e38 : 3.4028234663852886e38;
          const src = toBytes(x.map((v) => (Math.abs(v) > max ? Math.sign(v) * max : v)), dtype);
          // kivi refuses values beyond fp16, so it gets the same block within ±60000 as well.
          const small = toBytes(x.map((v) => Math.max(-60000, Math.min(60000, v))), dtype);
          const specs: [CodecSpec, Uint8Array][] = [
            [{ codec: 'fp8-e4m3' }, src],
            [{ codec: 'int8', scales: 'kivi' }, src],
            [{ codec: 'int8', scales: 'token' }, src],
            [{ codec: 'kivi2', group: dim % 8 === 0 ? 8 : 4 }, small],
            [{ codec: 'kivi4', group: dim }, small],
            [{ codec: 'kivi4', group: 4 }, src],
          ];
          for (const [spec, input] of specs) {
            const c = BlockCodec.open(spec, layoutOf(shape, dtype));
            const a = new Uint8Array(c.encodedBytes);
            const b = new Uint8Array(c.encodedBytes).fill(0xee);
            const outcome = (f: () => void): string => {
              try {
                f();
                return 'ok';
              } catch (err) {
                return (err as KvtierError).message;
              }
            };
            const oa = outcome(() => c.encode(input, a));
            expect(oa).toBe(outcome(() => c.encode(input, b, 1, { isa: 'scalar' })));
            if (oa !== 'ok') {
              expect(oa).toMatch(/beyond \+-65504/);
              refused++;
              continue;
            }
            if (!Buffer.from(a).equals(Buffer.from(b))) {
              const i = a.findIndex((v, j) => v !== b[j]);
              throw new Error(`${spec.codec} ${dtype} dim ${dim} shift ${shift}: byte ${i} ${a[i]} vs scalar ${b[i]}`);
            }
            compared++;
          }
        }
      }
    }
    expect(compared + refused).toBe(3 * 4 * 4 * 6);
    expect(refused).toBeGreaterThan(0); // kivi4 group 4 on the unclamped block
    expect(compared).toBeGreaterThan(3 * 4 * 4 * 5);
  });
});

describe('codec refusals', () => {
  const shape = { layers: 2, tokens: 4, heads: 2, dim: 16 };
  const badArg = (fn: () => unknown, pattern: RegExp): void => {
    try {
      fn();
    } catch (e) {
      expect(e).toBeInstanceOf(KvtierError);
      expect((e as KvtierError).code).toBe('KVTIER_BAD_ARGUMENT');
      expect((e as Error).message).toMatch(pattern);
      return;
    }
    throw new Error(`no error; expected ${pattern}`);
  };

  it('refuses at open a codec that does not fit the layout', () => {
    const fp8Layout = describeKvLayout({
      form: 'kv-first',
      numLayers: 1,
      numBlocks: 2,
      blockTokens: 4,
      kvHeads: 2,
      headDim: 16,
      dtype: 'fp8',
      layers: [{ offset: 0 }],
    });
    for (const codec of codecs) badArg(() => BlockCodec.open({ codec }, fp8Layout), /cannot encode dtype "fp8"/);
    badArg(() => BlockCodec.open({ codec: 'kivi2', group: 5 }, layoutOf(shape, 'fp16')), /group size 5 does not divide the head dimension 16/);
    badArg(() => BlockCodec.open({ codec: 'kivi4' }, layoutOf({ ...shape, dim: 48 }, 'bf16')), /group size 32 does not divide/);
    badArg(() => BlockCodec.open({ codec: 'kivi2', group: 0 }, layoutOf(shape, 'fp16')), /group must be a positive integer/);
    badArg(() => BlockCodec.open({ codec: 'int8', group: 4 }, layoutOf(shape, 'fp16')), /takes no group size/);
    badArg(() => BlockCodec.open({ codec: 'zstd' as CodecName }, layoutOf(shape, 'fp16')), /codec must be one of/);
    badArg(() => BlockCodec.open({ codec: 'fp8-e4m3', scales: 'token' }, layoutOf(shape, 'fp16')), /takes no scales/);
    badArg(() => BlockCodec.open({ codec: 'int8' }, layoutOf({ ...shape, heads: 0 }, 'fp16')), /heads/);
  });

  it('refuses to decode a block another codec, dtype, shape or version wrote, leaving dst as it was', () => {
    const x = toBytes(syntheticKv(shape, 1, 3), 'fp16');
    const open = (spec: CodecSpec, s = shape, dtype = 'fp16') => BlockCodec.open(spec, layoutOf(s, dtype));
    const fp8 = open({ codec: 'fp8-e4m3' });
    const enc = new Uint8Array(fp8.encodedBytes);
    fp8.encode(x, enc);
    expect(BlockCodec.readHeader(enc)).toMatchObject({ codec: 'fp8-e4m3', dtype: 'fp16', layers: 2, dim: 16 });
    const others = [
      open({ codec: 'int8', scales: 'token' }),
      open({ codec: 'kivi2', group: 8 }),
      open({ codec: 'fp8-e4m3' }, shape, 'bf16'),
      open({ codec: 'fp8-e4m3' }, { ...shape, heads: 1, dim: 32 }),
    ];
    for (const other of others) {
      // Same-sized buffers, so the header, not a length check, refuses.
      const src = new Uint8Array(Math.max(other.encodedBytes, enc.length));
      src.set(enc);
      const dst = new Uint8Array(other.decodedBytes).fill(0x5a);
      badArg(() => other.decode(src, dst), /another codec, dtype or shape|src holds/);
      expect(dst.every((b) => b === 0x5a)).toBe(true);
    }
    const dst = new Uint8Array(fp8.decodedBytes).fill(0x5a);
    const tamper = (i: number, v: number, pattern: RegExp): void => {
      const e = enc.slice();
      e[i] = v;
      badArg(() => fp8.decode(e, dst), pattern);
      expect(dst.every((b) => b === 0x5a)).toBe(true);
    };
    tamper(0, 0, /no KVTC magic/);
    tamper(4, 2, /unknown codec format version/);
    tamper(5, 9, /unknown codec/);
    tamper(28, enc[28]! ^ 1, /payload length does not match/);
    // In a batch, a bad second block refuses the whole call before the first is decoded.
    const two = new Uint8Array(2 * enc.length);
    two.set(enc);
    const dst2 = new Uint8Array(2 * fp8.decodedBytes).fill(0x5a);
    badArg(() => fp8.decode(two, dst2, 2), /block 1: not an encoded KV block/);
    expect(dst2.every((b) => b === 0x5a)).toBe(true);
    badArg(() => fp8.decode(enc.subarray(1), dst), /src holds/);
    badArg(() => fp8.decode(enc, dst.subarray(1)), /dst holds/);
  });

  it('refuses non-finite values, and kivi values beyond fp16', () => {
    const s = { layers: 1, tokens: 2, heads: 1, dim: 8 };
    const x = new Float32Array(32);
    x[5] = NaN;
    for (const codec of codecs) {
      const c = BlockCodec.open({ codec, ...(codec.startsWith('kivi') ? { group: 8 } : {}) }, layoutOf(s, 'fp32'));
      badArg(() => c.encode(x, new Uint8Array(c.encodedBytes)), /not finite/);
    }
    const big = new Float32Array(32).fill(1e6);
    const k = BlockCodec.open({ codec: 'kivi4', group: 8 }, layoutOf(s, 'fp32'));
    badArg(() => k.encode(big, new Uint8Array(k.encodedBytes)), /beyond \+-65504/);
    // The first group in order decides which refusal, on both paths: key channels (over the
    // tokens), then value groups.
    const w = { layers: 1, tokens: 3, heads: 2, dim: 16 };
    const kv = BlockCodec.open({ codec: 'kivi2', group: 8 }, layoutOf(w, 'fp32'));
    const n = kv.decodedBytes / 4;
    const at = (kvi: number, t: number, h: number, d: number): number => ((kvi * 3 + t) * 2 + h) * 16 + d;
    for (const [bigAt, nanAt, want] of [
      [at(0, 2, 0, 5), at(0, 1, 0, 9), /beyond/],
      [at(0, 2, 0, 9), at(0, 0, 0, 5), /not finite/],
      [at(0, 0, 1, 0), at(0, 2, 0, 15), /not finite/],
      [at(1, 0, 0, 7), at(1, 0, 1, 3), /beyond/],
      [at(1, 1, 0, 9), at(1, 0, 1, 3), /not finite/], // value group 5 after group 2
      [at(1, 0, 1, 2), at(1, 1, 0, 9), /beyond/],
      [at(1, 2, 1, 9), at(1, 0, 1, 3), /not finite/],
      [at(1, 0, 0, 0), at(0, 2, 1, 12), /not finite/],
    ] as const) {
      const y = new Float32Array(n).fill(0.5);
      y[bigAt] = -7e4;
      y[nanAt] = NaN;
      for (const isa of ['auto', 'scalar'] as const) {
        badArg(() => kv.encode(y, new Uint8Array(kv.encodedBytes), 1, { isa }), want);
      }
    }
  });
});

/** docs/codecs.md's test vectors: input values, their exact encoding, and the decoded values. */
const VECTORS: { spec: CodecSpec; dtype: KvFloatDtype; shape: number[]; x: number[]; hex: string; y: number[] }[] = [
  { spec: { codec: 'fp8-e4m3' }, dtype: 'fp32', shape: [1, 1, 1, 4], x: [448, -224, 1.75, 0, 1, 2, 3, 4], hex: '4b565443010103000100000001000000010000000400000000000000100000000000803f2549123c7ef63e006e767a7e', y: [448, -224, 1.75, 0, 1, 2, 2.857142925262451, 4] },
  { spec: { codec: 'int8', scales: 'token' }, dtype: 'fp16', shape: [1, 1, 1, 4], x: [1, -0.5, 0.25, 0, 127, 63.5, -1, 0], hex: '4b565443010201010100000001000000010000000400000000000000100000000402013c0000803f7fc020007f40ff00', y: [1, -0.50390625, 0.251953125, 0, 127, 64, -1, 0] },
  { spec: { codec: 'int8', scales: 'kivi' }, dtype: 'bf16', shape: [1, 2, 1, 2], x: [1, -8, 0.5, 4, 2, 2, -3, 1], hex: '4b565443010202020100000002000000010000000200000000000000180000000402013c0402813d0402813c0683c13c7f8140407f7f812a', y: [1, -8, 0.50390625, 4.03125, 2, 2, -3, 0.9921875] },
  { spec: { codec: 'kivi2', group: 4 }, dtype: 'fp16', shape: [1, 2, 1, 4], x: [0, 1, 2, 3, 3, 2, 1, 0, -1, 0, 0.5, 1, 10, 20, 30, 40], hex: '4b5654430103010001000000020000000100000004000000040000001c000000003c00005635003c5635003c003c0000563900bc00490049f00fe4e4', y: [0, 1, 2, 3, 3, 2, 1, 0, -1, -0.3330078125, 0.333984375, 1.0009765625, 10, 20, 30, 40] },
  { spec: { codec: 'kivi4', group: 2 }, dtype: 'fp16', shape: [1, 1, 1, 4], x: [0, 1.5, -2, 2, 0.1, 0.2, 5, -5], hex: '4b5654430104010001000000010000000100000004000000020000001c000000000000000000003e000000c000000040d41e662e563900c50000f00f', y: [0, 1.5, -2, 2, 0.0999755859375, 0.199951171875, 5.00390625, -5] },
];

describe('codec test vectors', () => {
  it.each(VECTORS.map((v) => [JSON.stringify(v.spec), v] as const))('%s encodes to its exact bytes and decodes to its exact values', (_name, v) => {
    const [L, T, H, D] = v.shape as [number, number, number, number];
    const c = BlockCodec.open(v.spec, { dtype: v.dtype, numLayers: L, blockTokens: T, kvHeads: H, headDim: D });
    const enc = new Uint8Array(c.encodedBytes);
    c.encode(toBytes(new Float32Array(v.x), v.dtype), enc);
    expect(Buffer.from(enc).toString('hex')).toBe(v.hex);
    for (const isa of ['auto', 'scalar'] as const) {
      const dec = new Uint8Array(c.decodedBytes);
      c.decode(Buffer.from(v.hex, 'hex'), dec, 1, { isa });
      expect([...fromBytes(dec, v.dtype)]).toEqual(v.y);
    }
  });
});
