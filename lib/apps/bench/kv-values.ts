/**
 * Element conversions and synthetic KV for the codec benchmark and tests: KV blocks are handled
 * as Float32Arrays of their values (in NHD packing order) and written in the layout's dtype.
 */
import { seededRandom } from './stats.js';

export type KvFloatDtype = 'fp16' | 'bf16' | 'fp32';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function bf16ToFloat(h: number): number {
  u32[0] = h << 16;
  return f32[0] as number;
}

/** fp32 to bf16 bits, round to nearest even (finite input). */
export function floatToBf16(x: number): number {
  f32[0] = x;
  const u = u32[0] as number;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m ? NaN : sign * Infinity;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/** fp32 to fp16 bits, round to nearest even (finite input within fp16's range). */
export function floatToHalf(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(Math.fround(x));
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) {
    // Subnormal: steps of 2^-24, ties to even.
    const q = a * 2 ** 24;
    let r = Math.round(q);
    if (r - q === 0.5 && r % 2 === 1) r -= 1;
    return sign | r;
  }
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e -= 1;
  if (2 ** (e + 1) <= a) e += 1;
  const q = (a / 2 ** e - 1) * 1024;
  let m = Math.round(q);
  if (m - q === 0.5 && m % 2 === 1) m -= 1;
  if (m === 1024) {
    m = 0;
    e += 1;
  }
  if (e > 15) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | m;
}

export function dtypeBytes(dtype: KvFloatDtype): number {
  return dtype === 'fp32' ? 4 : 2;
}

/** Values written in `dtype` (rounded to nearest even), little-endian. */
export function toBytes(values: Float32Array, dtype: KvFloatDtype): Uint8Array {
  if (dtype === 'fp32') return new Uint8Array(values.slice().buffer);
  const out = new Uint16Array(values.length);
  const conv = dtype === 'fp16' ? floatToHalf : floatToBf16;
  for (let i = 0; i < values.length; i++) out[i] = conv(values[i] as number);
  return new Uint8Array(out.buffer);
}

/** The values of bytes in `dtype`. */
export function fromBytes(bytes: Uint8Array, dtype: KvFloatDtype): Float32Array {
  if (dtype === 'fp32') {
    return new Float32Array(bytes.slice().buffer);
  }
  const h = new Uint16Array(bytes.slice().buffer);
  const out = new Float32Array(h.length);
  const conv = dtype === 'fp16' ? halfToFloat : bf16ToFloat;
  for (let i = 0; i < h.length; i++) out[i] = conv(h[i] as number);
  return out;
}

export interface KvShape {
  layers: number;
  tokens: number;
  heads: number;
  dim: number;
}

/** A standard normal draw (Box-Muller). */
export function gaussian(rand: () => number): number {
  const u = Math.max(rand(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
}

/**
 * `blocks` blocks of synthetic KV in NHD packing order: Gaussian values, and in the keys a few
 * outlier channels per head (KIVI's observation: some key channels are an order of magnitude
 * larger than the rest, across all tokens), each with its own fixed offset and scale.
 */
export function syntheticKv(
  shape: KvShape,
  blocks: number,
  seed: number,
  outliers = { channels: 4, magnitude: 12 },
): Float32Array {
  const { layers: L, tokens: T, heads: H, dim: D } = shape;
  const rand = seededRandom(seed);
  const slab = T * H * D;
  const out = new Float32Array(blocks * L * 2 * slab);
  // Outlier channels per (layer, head), the same across blocks and tokens.
  const big = new Map<number, number>();
  for (let l = 0; l < L; l++)
    for (let h = 0; h < H; h++)
      for (let c = 0; c < Math.min(outliers.channels, D); c++) {
        const d = Math.floor(rand() * D);
        big.set((l * H + h) * D + d, outliers.magnitude * (0.5 + rand()) * (rand() < 0.5 ? -1 : 1));
      }
  for (let b = 0; b < blocks; b++)
    for (let l = 0; l < L; l++)
      for (let kv = 0; kv < 2; kv++)
        for (let t = 0; t < T; t++)
          for (let h = 0; h < H; h++)
            for (let d = 0; d < D; d++) {
              let x = gaussian(rand);
              const o = kv === 0 ? big.get((l * H + h) * D + d) : undefined;
              if (o !== undefined) x = o + x * Math.abs(o) * 0.1;
              out[(((b * L + l) * 2 + kv) * T + t) * H * D + h * D + d] = x;
            }
  return out;
}
