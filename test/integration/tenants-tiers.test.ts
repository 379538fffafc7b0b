/**
 * Tenant accounting per tier (docs/tenants.md, "Accounting"): a known pattern of puts, hits,
 * evictions and expiry in a host + file store, whose per-tier counters must equal what moved,
 * sum to the tenant's totals, and match the warehouse's own per-tier hits.
 */
import { afterAll, describe, expect, it } from 'vitest';

import {
  chainKeys,
  Warehouse,
  type TenantCount,
  type TenantStats,
  type TenantTierStats,
} from '../../lib/index.js';
import { blockFor, blocksFor } from '../blocks.js';
import { tempDir } from '../helpers.js';

const BS = 4096;
const TOKENS = 4;
const MIN = 60_000;
const dirs: { remove(): void }[] = [];
afterAll(() => dirs.forEach((d) => d.remove()));

function chain(n: number, namespace: string): string[] {
  const tokens = Uint32Array.from({ length: n * TOKENS }, (_, i) => i);
  return chainKeys(tokens, { blockTokens: TOKENS, namespace }).keys();
}

const count = (blocks: number): TenantCount => ({
  blocks,
  bytes: blocks * BS,
  tokens: blocks * TOKENS,
});

const EVENTS = ['written', 'read', 'evicted', 'expired'] as const;

/** Per tier (host, file) the blocks of each event. */
function perTier(s: TenantStats): Record<(typeof EVENTS)[number], number[]> {
  const of = (e: (typeof EVENTS)[number]): number[] =>
    s.tiers.map((t: TenantTierStats) => t[e].blocks);
  return {
    written: of('written'),
    read: of('read'),
    evicted: of('evicted'),
    expired: of('expired'),
  };
}

/** Each total is the sum over the tiers, in blocks, bytes and tokens. */
function expectSums(s: TenantStats): void {
  for (const e of EVENTS) {
    const sum = count(0);
    for (const t of s.tiers) {
      sum.blocks += t[e].blocks;
      sum.bytes += t[e].bytes;
      sum.tokens += t[e].tokens;
    }
    expect(sum, e).toEqual(s[e]);
  }
}

describe('tenants: accounting per tier', () => {
  it('counts writes, hits, evictions and expiry in the tier each happened in', async () => {
    const d = tempDir('kvtier-tenant-tiers-');
    dirs.push(d);
    let now = 1_000_000;
    const wh = await Warehouse.open({
      blockBytes: BS,
      policy: 'lru',
      tiers: [
        { kind: 'host', bytes: 4 * BS },
        { kind: 'file', dir: d.path, bytes: 8 * BS },
      ],
      tenancy: {
        blockTokens: TOKENS,
        secret: Buffer.alloc(32, 7),
        now: () => now,
        retentionClasses: { short: 5 * MIN },
        tenants: [{ name: 'a', retention: 'short' }, { name: 'b' }],
      },
    });
    const a = wh.tenant('a');
    const [A, B, C] = [chain(4, 'A'), chain(4, 'B'), chain(6, 'C')];
    const tierHits = (): number[] => wh.stats().tiers.map((t) => t.hits);

    // 1. A fills the host tier: 4 written there.
    const pa = await a.put(A, blocksFor(A, BS));
    expect(pa.tiers).toEqual([0, 0, 0, 0]);
    // 2. B takes the host tier; A is demoted to the file tier, which is no write of a's.
    const pb = await a.put(B, blocksFor(B, BS));
    expect(pb.tiers).toEqual([0, 0, 0, 0]);
    expect(a.lookup(A).tiers).toEqual([1, 1, 1, 1]);
    expect(wh.stats().tiers[1]!.demotions).toBe(4);
    expect(perTier(a.stats()).written).toEqual([8, 0]);

    // 3. Hits: 2 from the file tier (not promoted, so nothing moves), 4 from the host tier.
    const hits0 = tierHits();
    const fromFile = Buffer.alloc(2 * BS);
    const g1 = await a.get(A.slice(0, 2), fromFile, { promote: false });
    expect(g1.tiers).toEqual([1, 1]);
    expect(fromFile.equals(Buffer.concat(A.slice(0, 2).map((k) => blockFor(k, BS))))).toBe(true);
    const fromHost = Buffer.alloc(4 * BS);
    expect((await a.get(B, fromHost)).tiers).toEqual([0, 0, 0, 0]);
    expect(fromHost.equals(Buffer.concat(B.map((k) => blockFor(k, BS))))).toBe(true);
    const hits1 = tierHits();
    let s = a.stats();
    expect(perTier(s).read).toEqual([4, 2]);
    // The warehouse counted the same hits in the same tiers (only a read).
    expect(hits1.map((h, i) => h - hits0[i]!)).toEqual(perTier(s).read);

    // 4. C (6 blocks): 4 into the host tier (B demoted into the file tier's 4 free slots), then,
    // the host tier's slots all reserved by C, 2 spill into the file tier, evicting the 2 least
    // recently used of A (its last copies: evicted from the file tier).
    const pc = await a.put(C, blocksFor(C, BS));
    expect(pc.tiers).toEqual([0, 0, 0, 0, 1, 1]);
    expect(a.lookup(A).tiers).toEqual([1, 1, -1, -1]);
    expect(a.lookup(B).tiers).toEqual([1, 1, 1, 1]);
    s = a.stats();
    expect(perTier(s)).toEqual({
      written: [12, 2],
      read: [4, 2],
      evicted: [0, 2],
      expired: [0, 0],
    });
    expect(s.written).toEqual(count(14));
    expect(s.evicted).toEqual(count(2));
    expectSums(s);
    // What a holds is what it wrote, less what left.
    const held = s.tiers.reduce((n, t) => n + t.blocks, 0);
    expect(held).toBe(s.written.blocks - s.evicted.blocks - s.expired.blocks);
    expect(s.tiers.map((t) => t.blocks)).toEqual([4, 8]);

    // 5. Time passes the retention: every block of a expires, from the tier it was held in.
    now += 6 * MIN;
    const miss = chain(1, 'none');
    expect((await a.get(miss, Buffer.alloc(BS))).count).toBe(0); // sweeps what is due first
    s = a.stats();
    expect(perTier(s).expired).toEqual([4, 8]);
    expect(perTier(s).evicted).toEqual([0, 2]); // expiry is not eviction
    expect(s.expired).toEqual(count(12));
    expect(s.tiers.map((t) => t.blocks)).toEqual([0, 0]);
    expect(wh.keys()).toHaveLength(0);
    expectSums(s);

    // b did nothing: nothing counted for it anywhere.
    const b = wh.tenant('b').stats();
    for (const e of EVENTS) {
      expect(b[e]).toEqual(count(0));
      for (const t of b.tiers) expect(t[e]).toEqual(count(0));
    }
    await wh.close();
  });

  it('a write-through put is written once, in the highest tier; it expires from the lowest', async () => {
    const d = tempDir('kvtier-tenant-tiers-');
    dirs.push(d);
    let now = 0;
    const wh = await Warehouse.open({
      blockBytes: BS,
      writeThrough: true,
      tiers: [
        { kind: 'host', bytes: 4 * BS },
        { kind: 'file', dir: d.path, bytes: 8 * BS },
      ],
      tenancy: {
        blockTokens: TOKENS,
        secret: Buffer.alloc(32, 7),
        now: () => now,
        retentionClasses: { short: MIN },
        tenants: [{ name: 'a', retention: 'short' }],
      },
    });
    const a = wh.tenant('a');
    const keys = chain(3, 'w');
    const r = await a.put(keys, blocksFor(keys, BS));
    expect(r.tiers).toEqual([0, 0, 0]);
    const s = a.stats();
    // Both copies are held (and charged), but the put wrote each block once.
    expect(s.tiers.map((t) => t.blocks)).toEqual([3, 3]);
    expect(perTier(s).written).toEqual([3, 0]);
    expect(s.written).toEqual(count(3));
    // Every copy goes at once; the block is counted once, in the tier of its last copy.
    now += 2 * MIN;
    expect((await a.get(chain(1, 'none'), Buffer.alloc(BS))).count).toBe(0);
    const e = a.stats();
    expect(wh.keys()).toHaveLength(0);
    expect(perTier(e).expired).toEqual([0, 3]);
    expect(e.expired).toEqual(count(3));
    expectSums(e);
    await wh.close();
  });

  it('evicted from the host tier when no tier below can take the block', async () => {
    const d = tempDir('kvtier-tenant-tiers-');
    dirs.push(d);
    let now = 0;
    const wh = await Warehouse.open({
      blockBytes: BS,
      policy: 'lru',
      tiers: [
        { kind: 'host', bytes: 2 * BS },
        { kind: 'file', dir: d.path, bytes: 2 * BS },
      ],
      tenancy: {
        blockTokens: TOKENS,
        secret: Buffer.alloc(32, 7),
        now: () => now,
        retentionClasses: { short: MIN },
        tenants: [{ name: 'a', retention: 'short' }],
      },
    });
    const a = wh.tenant('a');
    const [P, Q, R] = [chain(2, 'P'), chain(2, 'Q'), chain(2, 'R')];
    await a.put(P, blocksFor(P, BS));
    await a.put(Q, blocksFor(Q, BS)); // P demoted to the file tier, which is then full
    expect(a.lookup(P).tiers).toEqual([1, 1]);
    const lease = a.pin(P, { ttlMs: 10 * MIN });
    // R takes the host tier; Q cannot go down (P is held there): Q's only copies leave from host.
    expect((await a.put(R, blocksFor(R, BS))).tiers).toEqual([0, 0]);
    expect(a.lookup(Q).tiers).toEqual([-1, -1]);
    a.unpin(lease);
    let s = a.stats();
    expect(perTier(s).evicted).toEqual([2, 0]);
    expect(perTier(s).written).toEqual([6, 0]);
    expectSums(s);

    now += 2 * MIN;
    expect((await a.get(chain(1, 'none'), Buffer.alloc(BS))).count).toBe(0);
    s = a.stats();
    expect(wh.keys()).toHaveLength(0);
    // R expired from the host tier, P from the file tier.
    expect(perTier(s).expired).toEqual([2, 2]);
    expect(s.expired).toEqual(count(4));
    expect(s.written.blocks - s.evicted.blocks - s.expired.blocks).toBe(0);
    expectSums(s);
    await wh.close();
  });

  it("a tenant's own evict counts in no tier; a duplicate key in a put is written once", async () => {
    const wh = await Warehouse.open({
      blockBytes: BS,
      tiers: [{ kind: 'host', bytes: 8 * BS }],
      tenancy: { blockTokens: TOKENS, secret: Buffer.alloc(32, 7), tenants: [{ name: 'a' }] },
    });
    const a = wh.tenant('a');
    const keys = chain(3, 'x');
    const twice = [...keys, keys[0]!];
    const r = await a.put(twice, blocksFor(twice, BS));
    expect(r.stored).toBe(3);
    expect(r.tiers).toEqual([0, 0, 0, 0]);
    expect(perTier(a.stats()).written).toEqual([3]);
    expect((await a.evict(keys)).removed).toBe(3);
    const s = a.stats();
    expect(perTier(s)).toEqual({ written: [3], read: [0], evicted: [0], expired: [0] });
    expectSums(s);
    await wh.close();
  });
});
