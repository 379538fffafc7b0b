// Shared by the codec tier tests (warehouse-codec*.test.ts): a small KV shape, synthetic KV
// blocks, BlockCodec's own round trip to compare with, and warehouse options.
import { syntheticKv, toBytes, type KvFloatDtype } from '../../lib/apps/bench/kv-values.js';
import { BlockCodec, type CodecSpec } from '../../lib/core/codec.js';
import { chainKeys, type FileTierCodecOptions, type WarehouseOptions } from '../../lib/index.js';

export const SHAPE = { layers: 2, tokens: 16, heads: 2, dim: 64 };
export const layoutOf = (dtype: KvFloatDtype) => ({
  dtype,
  numLayers: SHAPE.layers,
  blockTokens: SHAPE.tokens,
  kvHeads: SHAPE.heads,
  headDim: SHAPE.dim,
});
export const blockBytesOf = (dtype: KvFloatDtype) =>
  2 * SHAPE.layers * SHAPE.tokens * SHAPE.heads * SHAPE.dim * (dtype === 'fp32' ? 4 : 2);

export const CODECS: CodecSpec[] = [
  { codec: 'fp8-e4m3' },
  { codec: 'int8' },
  { codec: 'int8', scales: 'token' },
  { codec: 'kivi4', group: 32 },
  { codec: 'kivi2' },
];

export function keysOf(n: number, namespace: string): string[] {
  const tokens = Uint32Array.from({ length: n * SHAPE.tokens }, (_, i) => i);
  return chainKeys(tokens, { blockTokens: SHAPE.tokens, namespace }).keys();
}

/** `n` blocks of synthetic KV (outlier key channels included) in `dtype`. */
export function kvBlocks(n: number, dtype: KvFloatDtype, seed: number): Buffer {
  return Buffer.from(toBytes(syntheticKv(SHAPE, n, seed), dtype));
}

/** What BlockCodec itself makes of the blocks: decode(encode(x)), block by block. */
export function roundTrip(codec: BlockCodec, x: Buffer, n: number): Buffer {
  const enc = new Uint8Array(codec.encodedBytes * n);
  const out = Buffer.alloc(x.length);
  codec.encode(x, enc, n);
  codec.decode(enc, out, n);
  return out;
}

export function options(
  d: string,
  spec: CodecSpec | undefined,
  dtype: KvFloatDtype,
  fileBlocks: number,
  extra: Partial<WarehouseOptions> = {},
): WarehouseOptions {
  const bs = blockBytesOf(dtype);
  const codec = spec ? BlockCodec.open(spec, layoutOf(dtype)) : undefined;
  const file = codec
    ? {
        kind: 'file' as const,
        dir: d,
        bytes: fileBlocks * codec.encodedBytes,
        codec: { ...spec!, layout: layoutOf(dtype) } as FileTierCodecOptions,
      }
    : { kind: 'file' as const, dir: d, bytes: fileBlocks * bs };
  return { blockBytes: bs, tiers: [{ kind: 'host', bytes: 2 * bs }, file], ...extra };
}
