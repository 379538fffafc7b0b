// A tenant's quota in bytes on an encoding file tier (issues 18 and 19 together): bytes are the
// tier's own, so the quota holds as many blocks as those bytes store encoded, and usage and quota
// are reported in stored bytes.
import { afterAll, expect, it } from 'vitest';

import { BlockCodec } from '../../lib/core/codec.js';
import { Warehouse } from '../../lib/index.js';
import { tempDir } from '../helpers.js';
import { blockBytesOf, keysOf, kvBlocks, layoutOf } from './codec-tier-helpers.js';

const d = tempDir('kvtier-tenant-codec-');
afterAll(() => d.remove());

it('a quota in bytes on a kivi2 file tier counts stored (encoded) bytes', async () => {
  const layout = layoutOf('fp16');
  const bs = blockBytesOf('fp16');
  const codec = BlockCodec.open({ codec: 'kivi2' }, layout);
  const wh = await Warehouse.open({
    blockBytes: bs,
    tiers: [
      { kind: 'host', bytes: bs },
      { kind: 'file', dir: d.path, bytes: 64 * bs, codec: { codec: 'kivi2', layout } },
    ],
    tenancy: {
      blockTokens: 16,
      secret: Buffer.alloc(32, 3),
      tenants: [{ name: 'a', quota: { file: { bytes: 32 * bs } } }],
    },
  });
  const stored = wh.stats().tiers[1]!.storedBlockBytes!;
  expect(stored).toBeGreaterThanOrEqual(codec.encodedBytes);
  expect(stored).toBeLessThan(bs);
  const quotaBlocks = Math.floor((32 * bs) / stored);
  const a = wh.tenant('a');
  // Far more than the quota, one block a put (each demotes the last one to the file tier).
  const keys = keysOf(quotaBlocks + 20, 'a');
  const x = kvBlocks(keys.length, 'fp16', 5);
  for (let i = 0; i < keys.length; i++) {
    await a.put([keys[i]!], x.subarray(i * bs, (i + 1) * bs));
  }
  const file = a.stats().tiers.find((t) => t.name === 'file')!;
  expect(file.quotaBytes).toBe(quotaBlocks * stored);
  expect(file.blocks).toBe(quotaBlocks); // decoded-size accounting would allow 32
  expect(file.usedBytes).toBe(quotaBlocks * stored);
  await wh.close();
});
