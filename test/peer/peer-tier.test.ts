import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { chainKeys, Warehouse } from '../../lib/index.js';
import { randomBytes, tempDir } from '../helpers.js';
import { killAll, startServe, writeToken, type ServeProcess } from './serve-process.js';

const BS = 64 * 1024;
const dirs: { remove(): void }[] = [];
let server: ServeProcess;
let tokenFile: string;
let url: string;

beforeAll(async () => {
  const d = tempDir('kvtier-peer-tier-');
  dirs.push(d);
  tokenFile = writeToken(d.path);
  server = await startServe({
    dir: join(d.path, 'wh'),
    blockBytes: BS,
    hostBytes: 64 * BS,
    fileBytes: 512 * BS,
    tokenFile,
  });
  url = `kvtier://127.0.0.1:${server.port}`;
});

afterAll(() => {
  killAll();
  dirs.forEach((d) => d.remove());
});

function keysFor(n: number, seed: number): string[] {
  const tokens = new Uint32Array(n * 8).map((_, i) => i * 3 + seed);
  return chainKeys(tokens, { blockTokens: 8, namespace: `tier-${seed}` }).keys();
}

describe('PeerTier', () => {
  it('a block put through one warehouse is read by another through the shared peer', async () => {
    const a = await Warehouse.open({
      blockBytes: BS,
      tiers: [
        { kind: 'host', bytes: 16 * BS },
        { kind: 'peer', url, tokenFile },
      ],
    });
    const b = await Warehouse.open({
      blockBytes: BS,
      tiers: [
        { kind: 'host', bytes: 16 * BS },
        { kind: 'peer', url, tokenFile },
      ],
    });
    try {
      const keys = keysFor(6, 1);
      const src = randomBytes(6 * BS);
      expect((await a.put(keys, src)).stored).toBe(6);

      // b has nothing locally: every block comes from the peer, whole and correct.
      expect(b.lookup(keys).prefix).toBe(0);
      const dst = Buffer.alloc(6 * BS);
      const got = await b.get(keys, dst);
      expect(got.count).toBe(6);
      expect(got.tiers).toEqual([1, 1, 1, 1, 1, 1]);
      expect(dst.equals(src)).toBe(true);

      // Promoted: the next get is local.
      expect(b.lookup(keys).prefix).toBe(6);
      const again = Buffer.alloc(6 * BS);
      expect((await b.get(keys, again)).tiers).toEqual([0, 0, 0, 0, 0, 0]);
      expect(again.equals(src)).toBe(true);

      const peerStats = b.stats().tiers.find((t) => t.kind === 'peer')!;
      expect(peerStats).toMatchObject({ hits: 6, errors: 0, bytesOut: 6 * BS });
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('mixes local and peer blocks in one get, and reports keys nobody has as misses', async () => {
    const wh = await Warehouse.open({
      blockBytes: BS,
      tiers: [
        { kind: 'host', bytes: 16 * BS },
        { kind: 'peer', url, tokenFile },
      ],
    });
    try {
      const keys = keysFor(4, 2);
      const src = randomBytes(4 * BS);
      await wh.put(keys.slice(0, 2), src.subarray(0, 2 * BS));
      await wh.evict(keys.slice(0, 1)); // local copy gone; the peer still has it
      const dst = Buffer.alloc(4 * BS);
      const got = await wh.get(keys, dst, { promote: false });
      expect(got.found).toEqual([true, true, false, false]);
      expect(got.tiers).toEqual([1, 0, -1, -1]);
      expect(dst.subarray(0, 2 * BS).equals(src.subarray(0, 2 * BS))).toBe(true);
    } finally {
      await wh.close();
    }
  });

  it('refuses a peer with a different block size, and a peer tier that is not last', async () => {
    await expect(
      Warehouse.open({
        blockBytes: 4096,
        tiers: [
          { kind: 'host', bytes: 16 * 4096 },
          { kind: 'peer', url, tokenFile },
        ],
      }),
    ).rejects.toMatchObject({ code: 'KVTIER_PROTOCOL' });
    await expect(
      Warehouse.open({
        blockBytes: BS,
        tiers: [
          { kind: 'peer', url, tokenFile },
          { kind: 'host', bytes: 16 * BS },
        ],
      }),
    ).rejects.toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
  });
});
