// A placement aborted after its payload went into an encoding tier's slot must
// not leave the slot's victim serving the new block's bytes (a miss, as in a lossless tier).
import { afterAll, expect, it } from 'vitest';

import { BlockCodec } from '../../lib/core/codec.js';
import { Warehouse } from '../../lib/index.js';
import { tempDir } from '../helpers.js';
import {
  blockBytesOf,
  keysOf,
  kvBlocks,
  layoutOf,
  roundTrip,
} from '../integration/codec-tier-helpers.js';

const d = tempDir('kvtier-review-');
afterAll(() => d.remove());

it('a failed sync leaves no victim of an encoding tier serving the aborted block', async () => {
  const spec = { codec: 'fp8-e4m3' as const };
  const layout = layoutOf('fp16');
  const codec = BlockCodec.open(spec, layout);
  const bs = blockBytesOf('fp16');
  const wh = await Warehouse.open({
    blockBytes: bs,
    durability: 'sync',
    tiers: [
      { kind: 'file', dir: d.path, bytes: 2 * codec.encodedBytes, codec: { ...spec, layout } },
    ],
  });
  const keys = keysOf(3, 'abort');
  const x = kvBlocks(3, 'fp16', 11);
  const block = (i: number) => x.subarray(i * bs, (i + 1) * bs);
  expect((await wh.put(keys.slice(0, 2), x.subarray(0, 2 * bs))).status).toEqual([
    'stored',
    'stored',
  ]);
  // An fsync that fails once (EIO): the third put fails and must leave the others as they were.
  const placement = (wh as unknown as { parts: { placement: { syncFiles(): Promise<unknown> } } })
    .parts.placement;
  const sync = placement.syncFiles.bind(placement);
  placement.syncFiles = async () => {
    placement.syncFiles = sync;
    await sync();
    return 'io-error';
  };
  expect((await wh.put([keys[2]!], block(2))).status).toEqual(['io-error']);
  for (const i of [0, 1]) {
    const out = Buffer.alloc(bs);
    const r = await wh.get([keys[i]!], out);
    // A miss is acceptable; any bytes found must be this key's decode(encode(x)).
    if (r.found[0]) expect(out.equals(roundTrip(codec, Buffer.from(block(i)), 1))).toBe(true);
  }
  await wh.close();
});
