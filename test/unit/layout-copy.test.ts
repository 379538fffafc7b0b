// The CPU executor of copy plans: gathers and scatters through one TransferBatch on kvtier's
// engine threads, for each layout form, checked byte for byte against a model of the layout.
import { randomFillSync } from 'node:crypto';

import { afterAll, describe, expect, it } from 'vitest';

import { createEngine, KvtierError, Region, TransferBatch } from '../../lib/index.js';
import {
  appendGather,
  describeKvLayout,
  gatherBlocks,
  planKvCopy,
  scatterBlocks,
  type KvLayoutSpec,
} from '../../lib/layout/index.js';

const engine = createEngine({ kind: 'threads', threads: 4 });
afterAll(() => engine.close());

const T = 4;
const H = 2;
const D = 8;
const L = 3;
const B = 6;
const eb = 2;
const slab = T * H * D; // elements of one (layer, K/V, block)
const shape = { numLayers: L, numBlocks: B, blockTokens: T, kvHeads: H, headDim: D } as const;

/** One description per form, all fp16, with the element offset the model gives each. */
const cases: [string, KvLayoutSpec, (l: number, kv: number, b: number, e: number) => number][] = [
  [
    'separate',
    {
      ...shape,
      dtype: 'fp16',
      form: 'separate',
      layers: Array.from({ length: L }, (_, l) => ({
        // V before K, with a gap, to show the description, not the order, decides.
        k: { offset: (2 * l + 1) * (B * slab + 8) * eb },
        v: { offset: 2 * l * (B * slab + 8) * eb },
      })),
    },
    (l, kv, b, e) => (2 * l + 1 - kv) * (B * slab + 8) + b * slab + e,
  ],
  [
    'kv-first',
    {
      ...shape,
      dtype: 'fp16',
      form: 'kv-first',
      layers: Array.from({ length: L }, (_, l) => ({ offset: l * 2 * B * slab * eb })),
    },
    (l, kv, b, e) => (l * 2 + kv) * B * slab + b * slab + e,
  ],
  [
    'block-first',
    {
      ...shape,
      dtype: 'fp16',
      form: 'block-first',
      layers: Array.from({ length: L }, (_, l) => ({ offset: l * 2 * B * slab * eb })),
    },
    (l, kv, b, e) => l * 2 * B * slab + (b * 2 + kv) * slab + e,
  ],
  [
    'stacked',
    {
      ...shape,
      dtype: 'fp16',
      form: 'stacked',
      order: ['block', 'layer', 'kv', 'token', 'head', 'dim'],
      tensor: { offset: 64 },
    },
    (l, kv, b, e) => 32 + ((b * L + l) * 2 + kv) * slab + e,
  ],
];

function expected(
  pool: Uint8Array,
  model: (l: number, kv: number, b: number, e: number) => number,
  b: number,
): Buffer {
  const out = Buffer.alloc(2 * L * slab * eb);
  let at = 0;
  for (let l = 0; l < L; l++)
    for (let kv = 0; kv < 2; kv++)
      for (let e = 0; e < slab; e++) {
        const src = model(l, kv, b, e) * eb;
        out.set(pool.subarray(src, src + eb), at);
        at += eb;
      }
  return out;
}

describe.each(cases)('%s layout on the thread engine', (_form, spec, model) => {
  it('gathers random blocks in one batch and scatters them back', async () => {
    const layout = describeKvLayout(spec);
    const pool = randomFillSync(Buffer.alloc(layout.extent + 16));
    const blocks = [5, 0, 3, 2];
    const packed = Buffer.alloc(8 + blocks.length * layout.blockBytes);
    const result = await gatherBlocks(engine, pool, layout, blocks, packed, { packedOffset: 8 });
    expect(result.bytes).toBe(blocks.length * layout.blockBytes);
    expect(result.descriptors).toBe(blocks.length * planKvCopy(layout).segmentCount);
    blocks.forEach((b, j) => {
      const got = packed.subarray(8 + j * layout.blockBytes, 8 + (j + 1) * layout.blockBytes);
      expect(got.equals(expected(pool, model, b))).toBe(true);
    });

    const back = Buffer.alloc(pool.length);
    await scatterBlocks(engine, back, layout, blocks, packed, { packedOffset: 8 });
    const mask = Buffer.alloc(pool.length);
    for (const b of blocks)
      for (let l = 0; l < L; l++)
        for (let kv = 0; kv < 2; kv++)
          for (let e = 0; e < slab; e++)
            mask.fill(1, model(l, kv, b, e) * eb, (model(l, kv, b, e) + 1) * eb);
    for (let i = 0; i < pool.length; i++) {
      if (back[i] !== (mask[i] ? pool[i] : 0)) throw new Error(`byte ${i} differs`);
    }
  });
});

describe('host executor', () => {
  const spec = cases[1]![1];

  it('works on Regions and shares a batch with other transfers', async () => {
    const layout = describeKvLayout(spec);
    const pool = Region.allocate(layout.extent, { pin: false });
    randomFillSync(pool.view());
    const packed = Region.allocate(2 * layout.blockBytes, { pin: false });
    const batch = new TransferBatch();
    const r = appendGather(batch, layout, pool, [4, 1], packed);
    expect(batch.length).toBe(r.descriptors);
    (await engine.submit(batch)).throwIfFailed();
    const model = cases[1]![2];
    expect(
      Buffer.from(packed.view(0, layout.blockBytes)).equals(expected(pool.view(), model, 4)),
    ).toBe(true);
    expect(
      Buffer.from(packed.view(layout.blockBytes)).equals(expected(pool.view(), model, 1)),
    ).toBe(true);
    await Promise.all([pool.close(), packed.close()]);
  });

  it('moves nothing for no blocks', async () => {
    const layout = describeKvLayout(spec);
    const r = await gatherBlocks(engine, Buffer.alloc(layout.extent), layout, [], Buffer.alloc(0));
    expect(r).toEqual({ descriptors: 0, bytes: 0 });
  });

  it('refuses bad input with KVTIER_BAD_ARGUMENT before moving anything', async () => {
    const layout = describeKvLayout(spec);
    const pool = Buffer.alloc(layout.extent);
    const packed = Buffer.alloc(2 * layout.blockBytes);
    const attempts: Promise<unknown>[] = [
      gatherBlocks(engine, Buffer.alloc(layout.extent - 1), layout, [0], packed),
      gatherBlocks(engine, pool, layout, [0, 1, 2], packed),
      gatherBlocks(engine, pool, layout, [0], packed, { packedOffset: layout.blockBytes + 1 }),
      gatherBlocks(engine, pool, layout, [B], packed),
      gatherBlocks(engine, pool, layout, [-1], packed),
      scatterBlocks(engine, pool, layout, [1, 1], packed),
      gatherBlocks(engine, pool, layout, [0], pool.subarray(0, layout.blockBytes)),
      gatherBlocks(engine, pool, planKvCopy(layout), [0], packed, { packing: 'HND' }),
    ];
    for (const attempt of attempts) {
      const e = await attempt.then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(e).toBeInstanceOf(KvtierError);
      expect((e as KvtierError).code).toBe('KVTIER_BAD_ARGUMENT');
    }
    expect(packed.every((x) => x === 0)).toBe(true);
  });
});
