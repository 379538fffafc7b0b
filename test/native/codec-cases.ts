// Shared by the codec test files: the layout a codec opens for a shape, and random cases.
import fc from 'fast-check';

import type { KvFloatDtype } from '../../lib/apps/bench/kv-values.js';
import type { CodecName, CodecSpec } from '../../lib/core/codec.js';

export interface Shape {
  layers: number;
  tokens: number;
  heads: number;
  dim: number;
}

export const layoutOf = (s: Shape, dtype: string) => ({
  dtype,
  numLayers: s.layers,
  blockTokens: s.tokens,
  kvHeads: s.heads,
  headDim: s.dim,
});


export const codecs: CodecName[] = ['fp8-e4m3', 'int8', 'kivi2', 'kivi4'];
export const dtypes: KvFloatDtype[] = ['fp16', 'bf16', 'fp32'];

export const arbCase = fc
  .record({
    codec: fc.constantFrom(...codecs),
    dtype: fc.constantFrom(...dtypes),
    layers: fc.integer({ min: 1, max: 3 }),
    tokens: fc.integer({ min: 1, max: 20 }),
    heads: fc.integer({ min: 1, max: 4 }),
    groups: fc.integer({ min: 1, max: 4 }),
    group: fc.constantFrom(1, 2, 3, 4, 5, 8, 12, 16),
    scales: fc.constantFrom('token' as const, 'kivi' as const),
    blocks: fc.integer({ min: 1, max: 3 }),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
    magnitude: fc.constantFrom(1, 12, 300),
  })
  .map((c) => {
    const kivi = c.codec === 'kivi2' || c.codec === 'kivi4';
    const spec: CodecSpec = { codec: c.codec };
    if (kivi) spec.group = c.group;
    if (c.codec === 'int8') spec.scales = c.scales;
    const shape = { layers: c.layers, tokens: c.tokens, heads: c.heads, dim: c.group * c.groups };
    return { ...c, spec, shape };
  });

