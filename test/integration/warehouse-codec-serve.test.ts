// A server whose file tier encodes (docs/codecs.md, "In the Warehouse"): durable puts over the
// wire land encoded, a peer gets decode(encode(x)) from the file and x from memory, in-process and
// through a real `kvtier serve --file-codec` process, whose refusals are checked too.
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { BlockCodec, type CodecSpec } from '../../lib/core/codec.js';
import { connect, PeerServer, Warehouse } from '../../lib/index.js';
import { tempDir } from '../helpers.js';
import { killAll, runCli, startServe, TOKEN, writeToken } from '../peer/serve-process.js';
import {
  blockBytesOf,
  keysOf,
  kvBlocks,
  layoutOf,
  options,
  roundTrip,
  SHAPE,
} from './codec-tier-helpers.js';

const dirs: { remove(): void }[] = [];
afterAll(() => {
  killAll();
  dirs.forEach((d) => d.remove());
});
function dir(): string {
  const d = tempDir('kvtier-whcs-');
  dirs.push(d);
  return d.path;
}

describe('a server whose file tier encodes', () => {
  it('takes durable puts encoded, and serves a peer decode(encode(x)) from the file, x from memory', async () => {
    const dtype = 'bf16';
    const bs = blockBytesOf(dtype);
    const spec: CodecSpec = { codec: 'kivi4' };
    const codec = BlockCodec.open(spec, layoutOf(dtype));
    const wh = await Warehouse.open(options(dir(), spec, dtype, 32));
    const secret = 'codec-test-secret-0123456789abcdef';
    const server = PeerServer.start({
      host: '127.0.0.1',
      port: 0,
      warehouse: wh,
      secret: Buffer.from(secret),
    });
    const client = await connect(`127.0.0.1:${server.port}`, { token: secret });
    try {
      const n = 6;
      const keys = keysOf(n, 'served');
      const x = kvBlocks(n, dtype, 31);
      expect((await client.put(keys, x, { durable: true })).stored).toBe(n);
      expect(wh.stats().tiers[1]!.usedBlocks).toBe(n); // every block's durable copy, encoded
      const where = wh.lookup(keys).tiers;
      expect(where.filter((t) => t === 1).length).toBeGreaterThan(0);
      const dst = Buffer.alloc(n * bs);
      expect((await client.get(keys, dst)).count).toBe(n);
      const lossy = roundTrip(codec, x, n);
      where.forEach((t, i) => {
        const want = (t === 0 ? x : lossy).subarray(i * bs, (i + 1) * bs);
        expect(dst.subarray(i * bs, (i + 1) * bs).equals(want), `block ${i} (tier ${t})`).toBe(
          true,
        );
      });
      expect(wh.stats().corrupt).toBe(0);
    } finally {
      await client.close();
      await server.close();
      await wh.close();
    }
  });
});

describe('kvtier serve --file-codec', () => {
  it('serves a file tier that encodes, and says so in its listening line', async () => {
    const dtype = 'fp16';
    const bs = blockBytesOf(dtype);
    const d = dir();
    const shape = `${dtype},${SHAPE.layers},${SHAPE.tokens},${SHAPE.heads},${SHAPE.dim}`;
    const serve = await startServe({
      dir: join(d, 'tier'),
      blockBytes: bs,
      hostBytes: 2 * bs,
      fileBytes: 16 * bs,
      tokenFile: writeToken(d),
      extra: ['--file-codec', 'kivi4:16', '--kv-shape', shape],
    });
    try {
      const listening = await serve.waitFor('listening');
      const tiers = listening.tiers as { kind: string; codec?: unknown; capacityBlocks: number }[];
      expect(tiers[0]!.codec).toBe('none');
      expect(tiers[1]!.codec).toEqual({ codec: 'kivi4', group: 16 });
      const codec = BlockCodec.open({ codec: 'kivi4', group: 16 }, layoutOf(dtype));
      expect(tiers[1]!.capacityBlocks).toBe(Math.floor((16 * bs) / codec.encodedBytes));
      const client = await connect(`127.0.0.1:${serve.port}`, { token: TOKEN });
      try {
        const keys = keysOf(4, 'serve-cli');
        const x = kvBlocks(4, dtype, 41);
        expect((await client.put(keys, x, { durable: true })).stored).toBe(4);
        const dst = Buffer.alloc(4 * bs);
        expect((await client.get(keys, dst)).count).toBe(4);
        // The host tier holds two of them exactly; the others come back decoded.
        const lossy = roundTrip(codec, x, 4);
        let exact = 0;
        for (let i = 0; i < 4; i++) {
          const got = dst.subarray(i * bs, (i + 1) * bs);
          if (got.equals(x.subarray(i * bs, (i + 1) * bs))) exact++;
          else expect(got.equals(lossy.subarray(i * bs, (i + 1) * bs)), `block ${i}`).toBe(true);
        }
        expect(exact).toBe(2);
      } finally {
        await client.close();
      }
    } finally {
      await serve.stop();
    }
  });

  it('refuses a codec without a shape, an unknown codec, and a shape that is not the blocks', async () => {
    const d = dir();
    const token = writeToken(d);
    const base = ['serve', '--listen', '127.0.0.1:0', '--token-file', token, '--dir', join(d, 't')];
    const bs = String(blockBytesOf('fp16'));
    const cases: [string[], RegExp][] = [
      [['--file-codec', 'int8'], /--file-codec needs --kv-shape/],
      [['--file-codec', 'zstd', '--kv-shape', 'fp16,2,16,2,64'], /--file-codec must be one of/],
      [['--file-codec', 'int8:8', '--kv-shape', 'fp16,2,16,2,64'], /takes no group size/],
      [['--file-codec', 'kivi2:32:64', '--kv-shape', 'fp16,2,16,2,64'], /one group size at most/],
      [['--file-codec', 'kivi2:0x20', '--kv-shape', 'fp16,2,16,2,64'], /a positive integer/],
      [['--file-codec', 'int8', '--kv-shape', 'fp16,2,0x10,2,64'], /--kv-shape must be/],
      [['--file-codec', 'int8', '--kv-shape', 'fp16,2,16,2'], /--kv-shape must be/],
      [
        ['--file-codec', 'int8', '--kv-shape', 'bf16,4,16,2,64'],
        /makes blocks of 32768 bytes.*blockBytes is 16384/,
      ],
    ];
    for (const [extra, pattern] of cases) {
      const r = await runCli([...base, '--file-bytes', '1MiB', '--block-bytes', bs, ...extra]);
      expect(r.code, r.stderr).not.toBe(0);
      expect(r.stderr).toMatch(pattern);
      expect(r.stderr).toMatch(/KVTIER_BAD_ARGUMENT/);
    }
  });
});
