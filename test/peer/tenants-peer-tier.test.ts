/**
 * Tenant accounting with a peer tier: a hit the peer served is counted in the tenant's entry for
 * that tier, at the same index as the warehouse's own stats().tiers, and the sums still hold.
 */
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { chainKeys, Warehouse, type WarehouseOptions } from '../../lib/index.js';
import { randomBytes, tempDir } from '../helpers.js';
import { killAll, startServe, writeToken } from './serve-process.js';

const BS = 64 * 1024;
const TOKENS = 8;
const dirs: { remove(): void }[] = [];
let tokenFile: string;
let url: string;

beforeAll(async () => {
  const d = tempDir('kvtier-tenant-peer-');
  dirs.push(d);
  tokenFile = writeToken(d.path);
  const server = await startServe({
    dir: join(d.path, 'wh'),
    blockBytes: BS,
    hostBytes: 64 * BS,
    fileBytes: 128 * BS,
    tokenFile,
  });
  url = `kvtier://127.0.0.1:${server.port}`;
});

afterAll(() => {
  killAll();
  dirs.forEach((d) => d.remove());
});

/** Two warehouses of one secret (so one tenant's internal keys are equal) over one peer. */
const options = (): WarehouseOptions => ({
  blockBytes: BS,
  tiers: [
    { kind: 'host', bytes: 16 * BS },
    { kind: 'peer', url, tokenFile },
  ],
  tenancy: { blockTokens: TOKENS, secret: Buffer.alloc(32, 3), tenants: [{ name: 't' }] },
});

describe('tenants over a peer tier', () => {
  it("counts the peer's hits in the tenant's peer entry", async () => {
    const [one, two] = [await Warehouse.open(options()), await Warehouse.open(options())];
    try {
      const tokens = Uint32Array.from({ length: 4 * TOKENS }, (_, i) => i * 5);
      const keys = chainKeys(tokens, { blockTokens: TOKENS, namespace: 'x' }).keys();
      const src = randomBytes(4 * BS);
      expect((await one.tenant('t').put(keys, src)).tiers).toEqual([0, 0, 0, 0]);

      const t = two.tenant('t');
      const dst = Buffer.alloc(4 * BS);
      const got = await t.get(keys, dst);
      expect(got.tiers).toEqual([1, 1, 1, 1]);
      expect(dst.equals(src)).toBe(true);
      const s = t.stats();
      const whTiers = two.stats().tiers;
      expect(s.tiers.map((x) => x.name)).toEqual(whTiers.map((x) => x.name));
      expect(s.tiers.map((x) => x.read.blocks)).toEqual([0, 4]);
      expect(whTiers[1]!.hits).toBe(4);
      expect(s.read.blocks).toBe(4);
      // The peer tier holds nothing of the tenant's here.
      expect(s.tiers[1]).toMatchObject({ blocks: 0, usedBytes: 0 });
      // Promoted on the way: the next hits are local.
      expect((await t.get(keys, Buffer.alloc(4 * BS))).tiers).toEqual([0, 0, 0, 0]);
      expect(t.stats().tiers.map((x) => x.read.blocks)).toEqual([4, 4]);
    } finally {
      await Promise.all([one.close(), two.close()]);
    }
  });
});
