// KV layout descriptions and their copy plans, checked against an independent model of where each
// element lies (computed from the description's own shape and strides, not from kvtier's planes).
import { randomFillSync } from 'node:crypto';

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { KvtierError } from '../../lib/core/errors.js';
import {
  describeKvLayout,
  KvCopyPlan,
  kvBlockBytes,
  planKvCopy,
  type KvDim,
  type KvDtype,
  type KvLayoutSpec,
  type KvPacking,
  type KvTensorRef,
} from '../../lib/layout/index.js';

const BYTES: Record<KvDtype, number> = { fp16: 2, bf16: 2, fp8: 1, fp32: 4 };
const DEFAULT_ORDER: KvDim[] = ['layer', 'kv', 'block', 'token', 'head', 'dim'];

type Pos = Record<KvDim, number>;

function contiguous(sizes: number[]): number[] {
  const out: number[] = [];
  let s = 1;
  for (let i = sizes.length - 1; i >= 0; i--) {
    out[i] = s;
    s *= sizes[i]!;
  }
  return out;
}

/** The model: the byte offset of element `p`, straight from the description. */
function elementOffset(spec: KvLayoutSpec, p: Pos): number {
  const size: Pos = {
    layer: spec.numLayers,
    kv: 2,
    block: spec.numBlocks,
    token: spec.blockTokens,
    head: spec.kvHeads,
    dim: spec.headDim,
  };
  let ref: KvTensorRef;
  let dims: KvDim[];
  switch (spec.form) {
    case 'separate':
      ref = p.kv === 0 ? spec.layers[p.layer]!.k : spec.layers[p.layer]!.v;
      dims = ['block', 'token', 'head', 'dim'];
      break;
    case 'kv-first':
      ref = spec.layers[p.layer]!;
      dims = ['kv', 'block', 'token', 'head', 'dim'];
      break;
    case 'block-first':
      ref = spec.layers[p.layer]!;
      dims = ['block', 'kv', 'token', 'head', 'dim'];
      break;
    case 'stacked':
      ref = spec.tensor;
      dims = [...(spec.order ?? DEFAULT_ORDER)];
      break;
  }
  const strides = ref.strides ?? contiguous(dims.map((d) => size[d]));
  let el = 0;
  dims.forEach((d, i) => (el += strides[i]! * p[d]));
  return ref.offset + el * BYTES[spec.dtype];
}

/** The packed kvtier block the model expects for engine block `block`. */
function expectedBlock(spec: KvLayoutSpec, pool: Uint8Array, block: number, packing: KvPacking) {
  const eb = BYTES[spec.dtype];
  const out = new Uint8Array(kvBlockBytes(spec));
  let at = 0;
  const [outer, inner] =
    packing === 'NHD' ? [spec.blockTokens, spec.kvHeads] : [spec.kvHeads, spec.blockTokens];
  for (let layer = 0; layer < spec.numLayers; layer++) {
    for (let kv = 0; kv < 2; kv++) {
      for (let o = 0; o < outer; o++) {
        for (let i = 0; i < inner; i++) {
          const [token, head] = packing === 'NHD' ? [o, i] : [i, o];
          for (let dim = 0; dim < spec.headDim; dim++) {
            const src = elementOffset(spec, { layer, kv, block, token, head, dim });
            out.set(pool.subarray(src, src + eb), at);
            at += eb;
          }
        }
      }
    }
  }
  return out;
}

/** Applies a plan's segments in JavaScript (the executor's job, minus the engine). */
function applyGather(plan: KvCopyPlan, pool: Uint8Array, blocks: number[]): Uint8Array {
  const out = new Uint8Array(blocks.length * plan.blockBytes);
  for (const s of KvCopyPlan.toSegments(plan.expand(blocks))) {
    out.set(pool.subarray(s.poolOffset, s.poolOffset + s.length), s.packedOffset);
  }
  return out;
}

function applyScatter(plan: KvCopyPlan, pool: Uint8Array, blocks: number[], packed: Uint8Array) {
  for (const s of KvCopyPlan.toSegments(plan.expand(blocks))) {
    pool.set(packed.subarray(s.packedOffset, s.packedOffset + s.length), s.poolOffset);
  }
}

/** A small seeded generator, so fast-check drives the shapes through one integer. */
function rng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n: number) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) % n) | 0;
  };
}

/** Strides of a random physical order of `sizes`, with random padding: [strides, span]. */
function randomStrides(sizes: number[], r: (n: number) => number): [number[], number] {
  const order = sizes.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = r(i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const strides = new Array<number>(sizes.length).fill(0);
  let span = 1;
  for (const i of order) {
    strides[i] = span + (r(3) === 0 ? r(3) : 0);
    span += strides[i] * (sizes[i]! - 1);
  }
  return [strides, span];
}

const FORMS = ['separate', 'kv-first', 'block-first', 'stacked'] as const;

/** A random, valid layout of a random form, and the pool size it needs. */
function randomSpec(seed: number, forced?: (typeof FORMS)[number]): [KvLayoutSpec, number] {
  const r = rng(seed);
  const dtype = (['fp16', 'bf16', 'fp8', 'fp32'] as const)[r(4)]!;
  const eb = BYTES[dtype];
  const shape = {
    numLayers: 1 + r(3),
    numBlocks: 1 + r(4),
    blockTokens: 1 + r(4),
    kvHeads: 1 + r(3),
    headDim: 1 + r(5),
    dtype,
  };
  const form = forced ?? FORMS[r(4)]!;
  const inner = [shape.blockTokens, shape.kvHeads, shape.headDim];
  let cursor = r(3) * eb;
  const place = (sizes: number[]): KvTensorRef => {
    const [strides, span] = randomStrides(sizes, r);
    const ref: KvTensorRef = r(4) === 0 ? { offset: cursor } : { offset: cursor, strides };
    const used = ref.strides ? span : sizes.reduce((a, b) => a * b, 1);
    cursor += (used + r(3)) * eb;
    return ref;
  };
  let spec: KvLayoutSpec;
  if (form === 'separate') {
    const refs = Array.from({ length: 2 * shape.numLayers }, () =>
      place([shape.numBlocks, ...inner]),
    );
    // Tensors lie in the pool in a shuffled order.
    for (let i = refs.length - 1; i > 0; i--) {
      const j = r(i + 1);
      [refs[i], refs[j]] = [refs[j]!, refs[i]!];
    }
    spec = {
      ...shape,
      form,
      layers: Array.from({ length: shape.numLayers }, (_, l) => ({
        k: refs[2 * l]!,
        v: refs[2 * l + 1]!,
      })),
    };
  } else if (form === 'kv-first' || form === 'block-first') {
    const sizes =
      form === 'kv-first' ? [2, shape.numBlocks, ...inner] : [shape.numBlocks, 2, ...inner];
    spec = { ...shape, form, layers: Array.from({ length: shape.numLayers }, () => place(sizes)) };
  } else {
    const order = [...DEFAULT_ORDER];
    for (let i = order.length - 1; i > 0; i--) {
      const j = r(i + 1);
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    const size: Pos = {
      layer: shape.numLayers,
      kv: 2,
      block: shape.numBlocks,
      token: shape.blockTokens,
      head: shape.kvHeads,
      dim: shape.headDim,
    };
    spec = { ...shape, form, order, tensor: place(order.map((d) => size[d])) };
  }
  return [spec, cursor + r(3) * eb];
}

function randomPool(bytes: number): Uint8Array {
  return randomFillSync(new Uint8Array(bytes));
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KvtierError);
    return (e as KvtierError).code;
  }
  throw new Error('expected an error');
}

const llama = { numLayers: 32, blockTokens: 16, kvHeads: 8, headDim: 128, dtype: 'bf16' } as const;

describe('KV layout descriptions', () => {
  it('computes the kvtier block size: 2 x layers x tokens x heads x dim x dtype', () => {
    expect(kvBlockBytes({ ...llama, numBlocks: 1 })).toBe(2 * 1024 * 1024);
    expect(kvBlockBytes({ ...llama, numBlocks: 1, dtype: 'fp8' })).toBe(1024 * 1024);
    expect(kvBlockBytes({ ...llama, numBlocks: 1, dtype: 'fp32' })).toBe(4 * 1024 * 1024);
  });

  it('normalises every form to planes that agree with the model', () => {
    fc.assert(
      fc.property(fc.integer(), (seed) => {
        const [spec, poolBytes] = randomSpec(seed);
        const layout = describeKvLayout(spec);
        expect(layout.extent).toBeLessThanOrEqual(poolBytes);
        expect(layout.planes).toHaveLength(2 * spec.numLayers);
        for (const p of layout.planes) {
          const at = (block: number, token: number, head: number, dim: number) =>
            elementOffset(spec, { layer: p.layer, kv: p.kv, block, token, head, dim });
          const b = spec.numBlocks - 1;
          const t = spec.blockTokens - 1;
          const h = spec.kvHeads - 1;
          const d = spec.headDim - 1;
          expect(p.offset).toBe(at(0, 0, 0, 0));
          expect(
            p.offset + b * p.blockStride + t * p.tokenStride + h * p.headStride + d * p.dimStride,
          ).toBe(at(b, t, h, d));
        }
      }),
      { numRuns: 200 },
    );
  });
});

describe('copy plans', () => {
  it.each(FORMS)('gather of a %s layout puts every byte where the packing order says', (form) => {
    for (let seed = 1; seed <= 40; seed++) {
      const [spec, poolBytes] = randomSpec(seed * 7919, form);
      const pool = randomPool(poolBytes);
      const layout = describeKvLayout(spec);
      for (const packing of ['NHD', 'HND'] as const) {
        const plan = planKvCopy(layout, { packing });
        const blocks = [spec.numBlocks - 1, 0, Math.floor(spec.numBlocks / 2)];
        const packed = applyGather(plan, pool, blocks);
        blocks.forEach((b, j) => {
          const got = packed.subarray(j * plan.blockBytes, (j + 1) * plan.blockBytes);
          expect(Buffer.from(got).equals(expectedBlock(spec, pool, b, packing))).toBe(true);
        });
      }
    }
  });

  it('encodes positions exactly: each fp32 element names its (layer, kv, block, token, head, dim)', () => {
    const spec: KvLayoutSpec = {
      form: 'kv-first',
      numLayers: 3,
      numBlocks: 5,
      blockTokens: 4,
      kvHeads: 2,
      headDim: 3,
      dtype: 'fp32',
      layers: [0, 1, 2].map((l) => ({ offset: l * 2 * 5 * 4 * 2 * 3 * 4 })),
    };
    const layout = describeKvLayout(spec);
    const pool = new DataView(new ArrayBuffer(layout.extent));
    const code = (p: Pos) =>
      ((((p.layer * 2 + p.kv) * 8 + p.block) * 8 + p.token) * 8 + p.head) * 8 + p.dim + 1;
    for (let layer = 0; layer < 3; layer++)
      for (let kv = 0; kv < 2; kv++)
        for (let block = 0; block < 5; block++)
          for (let token = 0; token < 4; token++)
            for (let head = 0; head < 2; head++)
              for (let dim = 0; dim < 3; dim++) {
                const p = { layer, kv, block, token, head, dim };
                pool.setUint32(elementOffset(spec, p), code(p), true);
              }
    const plan = planKvCopy(layout);
    const packed = applyGather(plan, new Uint8Array(pool.buffer), [3]);
    const view = new DataView(packed.buffer);
    let i = 0;
    for (let layer = 0; layer < 3; layer++)
      for (let kv = 0; kv < 2; kv++)
        for (let token = 0; token < 4; token++)
          for (let head = 0; head < 2; head++)
            for (let dim = 0; dim < 3; dim++) {
              expect(view.getUint32(4 * i++, true)).toBe(
                code({ layer, kv, block: 3, token, head, dim }),
              );
            }
  });

  it('scatter is the inverse of gather and touches nothing else (property)', () => {
    fc.assert(
      fc.property(fc.integer(), fc.constantFrom<KvPacking>('NHD', 'HND'), (seed, packing) => {
        const [spec, poolBytes] = randomSpec(seed);
        const pool = randomPool(poolBytes);
        const layout = describeKvLayout(spec);
        const plan = planKvCopy(layout, { packing });
        const blocks = [...new Set([seed & 3, (seed >>> 2) & 3, 0])].filter(
          (b) => b < spec.numBlocks,
        );
        const packed = applyGather(plan, pool, blocks);
        const back = new Uint8Array(poolBytes);
        applyScatter(plan, back, blocks, packed);
        // Every element of a scattered block is back; every other byte is still zero.
        const touched = new Uint8Array(poolBytes);
        const eb = layout.dtypeBytes;
        for (const block of blocks)
          for (let layer = 0; layer < spec.numLayers; layer++)
            for (let kv = 0; kv < 2; kv++)
              for (let token = 0; token < spec.blockTokens; token++)
                for (let head = 0; head < spec.kvHeads; head++)
                  for (let dim = 0; dim < spec.headDim; dim++) {
                    const at = elementOffset(spec, { layer, kv, block, token, head, dim });
                    touched.fill(1, at, at + eb);
                  }
        for (let i = 0; i < poolBytes; i++) {
          if (back[i] !== (touched[i] ? pool[i] : 0)) {
            throw new Error(`byte ${i}: ${back[i]} != ${touched[i] ? pool[i] : 0}`);
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  it('coalesces a block that is contiguous in the pool to one segment', () => {
    const spec: KvLayoutSpec = {
      ...llama,
      numBlocks: 10,
      form: 'stacked',
      order: ['block', 'layer', 'kv', 'token', 'head', 'dim'],
      tensor: { offset: 4096 },
    };
    const plan = planKvCopy(describeKvLayout(spec));
    expect(plan.segmentCount).toBe(1);
    expect(plan.segments(7)).toEqual([
      { poolOffset: 4096 + 7 * plan.blockBytes, packedOffset: 0, length: plan.blockBytes },
    ]);
    // Consecutive engine blocks packed side by side merge into one copy as well.
    expect(KvCopyPlan.toSegments(plan.expand([3, 4, 5], 100))).toEqual([
      { poolOffset: 4096 + 3 * plan.blockBytes, packedOffset: 100, length: 3 * plan.blockBytes },
    ]);
    expect(KvCopyPlan.toSegments(plan.expand([5, 4]))).toHaveLength(2);
  });

  it('gives one piece per layer and K/V, or per layer where K and V sit together', () => {
    const slab = 16 * 8 * 128 * 2;
    const numBlocks = 100;
    const kvFirst = describeKvLayout({
      ...llama,
      numBlocks,
      form: 'kv-first',
      layers: Array.from({ length: 32 }, (_, l) => ({ offset: l * 2 * numBlocks * slab })),
    });
    const plan = planKvCopy(kvFirst);
    expect(plan.blockBytes).toBe(2 * 1024 * 1024);
    expect(plan.segmentCount).toBe(64);
    expect(plan.segments(9).every((s) => s.length === slab)).toBe(true);

    const blockFirst = describeKvLayout({
      ...llama,
      numBlocks,
      form: 'block-first',
      layers: Array.from({ length: 32 }, (_, l) => ({ offset: l * 2 * numBlocks * slab })),
    });
    const segments = planKvCopy(blockFirst).segments(9);
    expect(segments).toHaveLength(32);
    expect(segments.every((s) => s.length === 64 * 1024)).toBe(true);

    // One layer, one block: K and V of the same tensor are adjacent, so one piece.
    const single = describeKvLayout({
      ...llama,
      numLayers: 1,
      numBlocks: 1,
      form: 'kv-first',
      layers: [{ offset: 0 }],
    });
    expect(planKvCopy(single).segmentCount).toBe(1);
  });

  it('packs HND-physical layouts into few pieces when asked for HND packing', () => {
    // vLLM FlashInfer with the HND cache layout: [blocks, 2, tokens, heads, dim] viewed with
    // strides of [blocks, 2, heads, tokens, dim].
    const [T, H, D] = [16, 8, 128];
    const strides = [2 * T * H * D, T * H * D, D, T * D, 1];
    const layout = describeKvLayout({
      ...llama,
      numLayers: 2,
      numBlocks: 4,
      form: 'block-first',
      layers: [0, 1].map((l) => ({ offset: l * 4 * 2 * T * H * D * 2, strides })),
    });
    expect(planKvCopy(layout, { packing: 'HND' }).segmentCount).toBe(2);
    expect(planKvCopy(layout, { packing: 'NHD' }).segmentCount).toBe(2 * (2 * T * H - 1));
  });

  it('reuses one plan per layout and packing', () => {
    const [spec] = randomSpec(42);
    const layout = describeKvLayout(spec);
    expect(planKvCopy(layout)).toBe(planKvCopy(layout, { packing: 'NHD' }));
    expect(planKvCopy(layout, { packing: 'HND' })).not.toBe(planKvCopy(layout));
  });
});

describe('bad input', () => {
  const good: KvLayoutSpec = {
    numLayers: 2,
    numBlocks: 4,
    blockTokens: 2,
    kvHeads: 2,
    headDim: 4,
    dtype: 'fp16',
    form: 'separate',
    layers: [0, 1].map((l) => ({ k: { offset: l * 256 }, v: { offset: l * 256 + 128 } })),
  };

  it('accepts the well-formed description the cases below break', () => {
    expect(describeKvLayout(good).extent).toBe(512);
  });

  it.each<[string, Partial<Record<string, unknown>>]>([
    ['a fractional size', { numBlocks: 2.5 }],
    ['a zero size', { kvHeads: 0 }],
    ['a negative size', { headDim: -4 }],
    ['a size that is not a number', { blockTokens: '2' }],
    ['an unknown dtype', { dtype: 'int4' }],
    ['an unknown form', { form: 'paged' }],
    ['a layer count that disagrees with the layers listed', { numLayers: 3 }],
    [
      'K and V at the same offset',
      { layers: [0, 1].map((l) => ({ k: { offset: l * 256 }, v: { offset: l * 256 } })) },
    ],
    [
      'tensors that overlap',
      { layers: [0, 1].map((l) => ({ k: { offset: l * 100 }, v: { offset: 300 + l * 128 } })) },
    ],
    [
      'a negative offset',
      {
        layers: [
          { k: { offset: -2 }, v: { offset: 128 } },
          { k: { offset: 256 }, v: { offset: 384 } },
        ],
      },
    ],
    [
      'an offset off the element size',
      {
        layers: [
          { k: { offset: 1 }, v: { offset: 128 } },
          { k: { offset: 256 }, v: { offset: 384 } },
        ],
      },
    ],
    [
      'a missing tensor',
      { layers: [{ k: { offset: 0 } }, { k: { offset: 256 }, v: { offset: 384 } }] },
    ],
    [
      'strides of the wrong count',
      {
        layers: [
          { k: { offset: 0, strides: [16, 8, 4] }, v: { offset: 128 } },
          { k: { offset: 256 }, v: { offset: 384 } },
        ],
      },
    ],
    [
      'a negative stride',
      {
        layers: [
          { k: { offset: 0, strides: [16, 8, -4, 1] }, v: { offset: 128 } },
          { k: { offset: 256 }, v: { offset: 384 } },
        ],
      },
    ],
    [
      'a fractional stride',
      {
        layers: [
          { k: { offset: 0, strides: [16, 8, 4, 0.5] }, v: { offset: 128 } },
          { k: { offset: 256 }, v: { offset: 384 } },
        ],
      },
    ],
    [
      'strides that overlap (heads over dim)',
      {
        layers: [
          { k: { offset: 0, strides: [16, 8, 2, 1] }, v: { offset: 128 } },
          { k: { offset: 256 }, v: { offset: 384 } },
        ],
      },
    ],
    [
      'a zero stride on a real dimension',
      {
        layers: [
          { k: { offset: 0, strides: [0, 8, 4, 1] }, v: { offset: 128 } },
          { k: { offset: 256 }, v: { offset: 384 } },
        ],
      },
    ],
  ])('refuses %s with KVTIER_BAD_ARGUMENT', (_what, change) => {
    expect(codeOf(() => describeKvLayout({ ...good, ...change }))).toBe('KVTIER_BAD_ARGUMENT');
  });

  it('refuses a stacked order that misses or repeats a dimension', () => {
    const stacked = {
      ...good,
      form: 'stacked' as const,
      tensor: { offset: 0 },
    };
    expect(describeKvLayout(stacked).extent).toBe(512);
    for (const order of [
      ['layer', 'kv', 'block', 'token', 'head'],
      ['layer', 'kv', 'block', 'token', 'head', 'head'],
      ['layer', 'kv', 'block', 'token', 'head', 'depth'],
    ]) {
      expect(codeOf(() => describeKvLayout({ ...stacked, order } as KvLayoutSpec))).toBe(
        'KVTIER_BAD_ARGUMENT',
      );
    }
  });

  it('refuses block indices out of range, a bad packing and a bad packed offset', () => {
    const plan = planKvCopy(describeKvLayout(good));
    for (const block of [-1, 4, 1.5, Number.NaN]) {
      expect(codeOf(() => plan.segments(block))).toBe('KVTIER_BAD_ARGUMENT');
    }
    expect(codeOf(() => plan.expand([0], -1))).toBe('KVTIER_BAD_ARGUMENT');
    expect(codeOf(() => planKvCopy(describeKvLayout(good), { packing: 'DHN' as KvPacking }))).toBe(
      'KVTIER_BAD_ARGUMENT',
    );
  });
});
