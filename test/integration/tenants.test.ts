import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, describe, expect, it, vi } from 'vitest';

import {
  isKvtierError,
  Warehouse,
  type TenancyOptions,
  type TierOptions,
  type WarehouseOptions,
} from '../../lib/index.js';
import { blocksFor } from '../blocks.js';
import { tempDir } from '../helpers.js';
import { BS, chain, count, hostTier, open, same, TOKENS } from './tenant-helpers.js';

const dirs: { remove(): void }[] = [];
afterAll(() => dirs.forEach((d) => d.remove()));
function dir(): string {
  const d = tempDir('kvtier-tenants-');
  dirs.push(d);
  return d.path;
}

async function rejects(p: Promise<unknown> | (() => unknown), code: string): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    expect(isKvtierError(e), String(e)).toBe(true);
    expect((e as { code: string }).code).toBe(code);
    return (e as Error).message;
  }
  throw new Error(`expected ${code}, nothing was thrown`);
}

describe('tenants: key isolation', () => {
  it("never lets one tenant's lookup or get reach another's blocks, whatever keys it sends", async () => {
    const wh = await open({ tenants: [{ name: 'a' }, { name: 'b' }] });
    const a = wh.tenant('a');
    const b = wh.tenant('b');
    const keys = chain(6);
    expect((await a.put(keys, blocksFor(keys, BS))).stored).toBe(6);
    const dst = Buffer.alloc(6 * BS);
    expect((await a.get(keys, dst)).count).toBe(6);
    expect(same(keys, dst)).toBe(true);
    expect(a.lookup(keys).prefix).toBe(6);
    const before = a.stats();

    // The same content keys, the raw key bytes, and the internal keys an operator sees.
    const internal = wh.keys();
    expect(internal).toHaveLength(6);
    expect(internal.some((k) => keys.includes(k))).toBe(false);
    const raw = keys.map((k) => Buffer.from(k, 'hex'));
    for (const forged of [keys, raw, internal]) {
      expect(b.lookup(forged)).toEqual({ prefix: 0, tiers: forged.map(() => -1) });
      const out = Buffer.alloc(forged.length * BS);
      const got = await b.get(forged, out);
      expect(got.count).toBe(0);
      expect(out.equals(Buffer.alloc(forged.length * BS))).toBe(true);
      expect((await b.evict(forged)).removed).toBe(0);
    }
    // Nothing of a's moved or was counted; b read nothing.
    expect(a.stats()).toEqual(before);
    expect(b.stats().read).toEqual(count(0));
    expect(a.lookup(keys).prefix).toBe(6);

    // The operator's plain methods see internal keys only: the client's keys find nothing.
    expect(wh.lookup(keys).prefix).toBe(0);
    // b storing the same content keys gets its own copies, not a 'present'.
    expect((await b.put(keys, blocksFor(keys, BS))).stored).toBe(6);
    expect(wh.keys()).toHaveLength(12);
    await wh.close();
  });

  it('keeps a tenant of one name apart across secrets, and finds its blocks again after a reopen', async () => {
    const d = dir();
    const tiers: TierOptions[] = [
      { kind: 'host', bytes: 4 * BS },
      { kind: 'file', dir: d, bytes: 32 * BS },
    ];
    const config = { blockTokens: TOKENS, tenants: [{ name: 'a' }, { name: 'b' }] };
    let wh = await Warehouse.open({ blockBytes: BS, tiers, tenancy: config });
    const keys = chain(10);
    expect((await wh.tenant('a').put(keys, blocksFor(keys, BS))).stored).toBe(10);
    await wh.close();
    // The secret was made at random and kept beside the blocks, readable by the owner only.
    const secret = join(d, 'tenancy.key');
    expect(statSync(secret).mode & 0o777).toBe(0o600);

    wh = await Warehouse.open({ blockBytes: BS, tiers, tenancy: config });
    const a = wh.tenant('a');
    expect(a.lookup(keys).prefix).toBe(10);
    // The index knows whose blocks the file held: usage is the tenant's again.
    const file = a.stats().tiers.find((t) => t.name === 'file')!;
    expect(file.blocks).toBe(10);
    expect(wh.tenant('b').lookup(keys).prefix).toBe(0);
    const dst = Buffer.alloc(10 * BS);
    expect((await a.get(keys, dst)).count).toBe(10);
    expect(same(keys, dst)).toBe(true);
    await wh.close();

    // Another secret: another salt; the same tenant name reaches none of those blocks.
    wh = await Warehouse.open({
      blockBytes: BS,
      tiers,
      tenancy: { ...config, secret: Buffer.alloc(32, 1) },
    });
    expect(wh.tenant('a').lookup(keys).prefix).toBe(0);
    expect((await wh.tenant('a').get(keys, dst)).count).toBe(0);
    await wh.close();
  });
});

describe('tenants: accounting', () => {
  it('counts writes, reads, evictions in blocks, bytes and tokens that match the blocks moved', async () => {
    const wh = await open({ tenants: [{ name: 'a' }, { name: 'b' }] }, { tiers: hostTier(8) });
    const a = wh.tenant('a');
    const b = wh.tenant('b');
    const ka = chain(6, 'a');
    const kb = chain(6, 'b');
    expect((await a.put(ka, blocksFor(ka, BS))).stored).toBe(6);
    expect((await a.put(ka, blocksFor(ka, BS))).present).toBe(6); // present: no second write
    const dst = Buffer.alloc(8 * BS);
    // 4 hits and 2 misses (keys never put).
    const asked = [...ka.slice(0, 4), ...chain(2, 'none')];
    expect((await a.get(asked, dst)).count).toBe(4);
    expect((await a.evict(ka.slice(4))).removed).toBe(2);
    const s = a.stats();
    expect(s.written).toEqual(count(6));
    expect(s.read).toEqual(count(4));
    expect(s.evicted).toEqual(count(0)); // its own evict is not an eviction for space
    expect(s.tiers).toMatchObject([{ name: 'host', blocks: 4, usedBytes: 4 * BS }]);
    expect(s.tiers[0]!.quotaBytes).toBeUndefined();

    // b fills the tier (8 slots): 4 free, then a's least recently used go for space.
    expect((await b.put(kb.slice(0, 4), blocksFor(kb.slice(0, 4), BS))).stored).toBe(4);
    expect((await b.put(kb.slice(4), blocksFor(kb.slice(4), BS))).stored).toBe(2);
    const all = wh.stats();
    const tenants = all.tenants!;
    expect(tenants.map((t) => t.name)).toEqual(['a', 'b']);
    expect(tenants[1]!.written).toEqual(count(6));
    // The tenants' usage adds up to the tier's (full: 8 blocks).
    const used = tenants.reduce((n, t) => n + t.tiers[0]!.usedBytes, 0);
    expect(all.tiers[0]!.usedBlocks).toBe(8);
    expect(used).toBe(8 * BS);
    // Two blocks left for space (whose is the policy's choice), charged to their tenants; the
    // tier counted those and a's two evict()s.
    const evictedForSpace = tenants.reduce((n, t) => n + t.evicted.blocks, 0);
    expect(evictedForSpace).toBe(2);
    expect(all.tiers[0]!.evictions).toBe(2 + 2);
    // Per tenant: written - evicted - its own evicts = what it holds, and lookup agrees.
    const aHeld = a.lookup(ka).tiers.filter((t) => t >= 0).length;
    const bHeld = b.lookup(kb).tiers.filter((t) => t >= 0).length;
    expect(tenants[0]!.tiers[0]!.blocks).toBe(aHeld);
    expect(tenants[1]!.tiers[0]!.blocks).toBe(bHeld);
    expect(tenants[0]!.written.blocks - tenants[0]!.evicted.blocks - 2).toBe(aHeld);
    expect(tenants[1]!.written.blocks - tenants[1]!.evicted.blocks).toBe(bHeld);
    await wh.close();
  });

  it('has no tenants in stats() and no tenant() without tenancy', async () => {
    const wh = await Warehouse.open({ blockBytes: BS, tiers: hostTier(4) });
    expect(wh.stats().tenants).toBeUndefined();
    expect(wh.tenants()).toEqual([]);
    await rejects(() => wh.tenant('a'), 'KVTIER_UNKNOWN_TENANT');
    await wh.close();
  });
});

describe('tenants: quotas', () => {
  it("holds a tenant to its quota with its own blocks, even with slots free, and says 'no-space' when they are pinned", async () => {
    const wh = await open({
      tenants: [{ name: 'a', quota: { host: { share: 0.5 } } }, { name: 'b' }],
    });
    const a = wh.tenant('a');
    const keys = chain(14, 'a');
    expect((await a.put(keys.slice(0, 6), blocksFor(keys.slice(0, 6), BS))).stored).toBe(6);
    // 6 more: 2 take free slots up to the quota (8 of 16), 4 take the place of a's oldest.
    expect((await a.put(keys.slice(6, 12), blocksFor(keys.slice(6, 12), BS))).stored).toBe(6);
    const s = a.stats();
    expect(s.tiers[0]).toMatchObject({
      name: 'host',
      blocks: 8,
      usedBytes: 8 * BS,
      quotaBytes: 8 * BS,
    });
    expect(s.evicted).toEqual(count(4));
    expect(wh.stats().tiers[0]!.usedBlocks).toBe(8); // 8 slots still free: a may not have them
    // The 6 just put, and 2 of the first 6 (which: the policy's choice) are held.
    expect(a.lookup(keys.slice(6, 12)).prefix).toBe(6);
    const heldKeys = keys.slice(0, 12).filter((_, i) => a.lookup(keys.slice(0, 12)).tiers[i]! >= 0);
    expect(heldKeys).toHaveLength(8);

    // Every block of a held under a lease: nothing of its own can make room.
    const lease = a.pin(heldKeys, { ttlMs: 60_000 });
    expect(lease.keys).toEqual(heldKeys);
    const r = await a.put(keys.slice(12), blocksFor(keys.slice(12), BS));
    expect(r).toEqual({
      stored: 0,
      present: 0,
      rejected: 2,
      status: ['no-space', 'no-space'],
      tiers: [-1, -1],
    });
    // b's puts still find the free half.
    const kb = chain(8, 'b');
    expect((await wh.tenant('b').put(kb, blocksFor(kb, BS))).stored).toBe(8);
    a.unpin(lease);
    expect((await a.put(keys.slice(12), blocksFor(keys.slice(12), BS))).stored).toBe(2);
    expect(wh.tenant('b').lookup(kb).prefix).toBe(8);
    await wh.close();
  });

  it('spills what passes the quota of the top tier into the tier below, as a put spills', async () => {
    const wh = await open(
      { tenants: [{ name: 'a', quota: { host: { bytes: 4 * BS } } }] },
      {
        tiers: [
          { kind: 'host', bytes: 8 * BS },
          { kind: 'file', dir: dir(), bytes: 32 * BS },
        ],
      },
    );
    const a = wh.tenant('a');
    const keys = chain(8, 'a');
    expect((await a.put(keys, blocksFor(keys, BS))).status).toEqual(keys.map(() => 'stored'));
    expect(a.lookup(keys).tiers).toEqual([0, 0, 0, 0, 1, 1, 1, 1]);
    expect(a.stats().tiers.map((t) => t.blocks)).toEqual([4, 4]);
    const dst = Buffer.alloc(8 * BS);
    expect((await a.get(keys, dst, { promote: false })).count).toBe(8);
    expect(same(keys, dst)).toBe(true);
    await wh.close();
  });

  it("keeps a tenant's working set hit for hit while a neighbour writes ten times the tier", async () => {
    const TIER = 32;
    const tenants = [
      { name: 'a', quota: { host: { share: 0.5 } } },
      { name: 'b', quota: { host: { share: 0.5 } } },
    ];
    const work = chain(12, 'a');
    const noise = chain(TIER * 10, 'b');

    /** Rounds of a reading its working set, with b writing 32 blocks between them when noisy. */
    async function run(noisy: boolean): Promise<{ hits: number[]; bUsed: number }> {
      const wh = await open({ tenants }, { tiers: hostTier(TIER) });
      const a = wh.tenant('a');
      const b = wh.tenant('b');
      expect((await a.put(work, blocksFor(work, BS))).stored).toBe(12);
      const hits: number[] = [];
      const dst = Buffer.alloc(work.length * BS);
      for (let round = 0; round < 10; round++) {
        if (noisy) {
          for (let i = 0; i < TIER; i += 8) {
            const ks = noise.slice(round * TIER + i, round * TIER + i + 8);
            await b.put(ks, blocksFor(ks, BS));
          }
        }
        dst.fill(0);
        hits.push((await a.get(work, dst)).count);
        expect(same(work, dst)).toBe(true);
      }
      const bUsed = b.stats().tiers[0]!.blocks;
      await wh.close();
      return { hits, bUsed };
    }

    const alone = await run(false);
    const noisy = await run(true);
    expect(alone.hits).toEqual(Array.from({ length: 10 }, () => 12));
    expect(noisy.hits).toEqual(alone.hits);
    expect(noisy.bUsed).toBe(TIER / 2); // b wrote 320 blocks and holds its half
  });

  it('takes blocks of a tenant over its quota first (reopened with a smaller one)', async () => {
    const d = dir();
    const open2 = (aBytes: number): Promise<Warehouse> =>
      Warehouse.open({
        blockBytes: BS,
        tiers: [{ kind: 'file', dir: d, bytes: 8 * BS }],
        tenancy: {
          blockTokens: TOKENS,
          tenants: [
            { name: 'a', quota: { file: { bytes: aBytes } } },
            { name: 'b', quota: { file: { bytes: 4 * BS } } },
            { name: 'c' },
          ],
        },
      });
    let wh = await open2(8 * BS);
    const ka = chain(8, 'a');
    expect((await wh.tenant('a').put(ka, blocksFor(ka, BS))).stored).toBe(8);
    await wh.close();
    wh = await open2(4 * BS); // a now holds twice its quota, and the tier is full
    const kb = chain(4, 'b');
    expect((await wh.tenant('b').put(kb, blocksFor(kb, BS))).stored).toBe(4);
    // Every block b needed came from a, the tenant over its quota.
    expect(wh.tenant('a').stats().tiers[0]!.blocks).toBe(4);
    expect(wh.tenant('a').stats().evicted).toEqual(count(4));
    // c has no quota: with a and b both within theirs, only its own blocks could make room.
    const kc = chain(1, 'c');
    expect((await wh.tenant('c').put(kc, blocksFor(kc, BS))).status).toEqual(['busy']);
    await wh.close();
  });

  it("never evicts a 'pinned' tenant's blocks for another tenant's put", async () => {
    const wh = await open(
      {
        retentionClasses: { forever: 'pinned' },
        tenants: [{ name: 'p', retention: 'forever' }, { name: 'q' }],
      },
      { tiers: hostTier(8) },
    );
    const kp = chain(6, 'p');
    const kq = chain(10, 'q');
    expect((await wh.tenant('p').put(kp, blocksFor(kp, BS))).stored).toBe(6);
    const q = wh.tenant('q');
    for (let i = 0; i < 10; i += 2) {
      expect((await q.put(kq.slice(i, i + 2), blocksFor(kq.slice(i, i + 2), BS))).stored).toBe(2);
    }
    expect(wh.tenant('p').lookup(kp).prefix).toBe(6);
    expect(q.stats().evicted.blocks).toBe(8);
    expect(wh.tenant('p').stats().evicted.blocks).toBe(0);
    await wh.close();
  });
});

describe('tenants: retention', () => {
  it('expires blocks idle past their class, by the injected clock, and counts them', async () => {
    let now = 1_000_000;
    const MIN = 60_000;
    const wh = await open({
      now: () => now,
      retentionClasses: { short: 5 * MIN, long: 60 * MIN },
      tenants: [
        { name: 's', retention: 'short' },
        { name: 'l', retention: 'long' },
      ],
    });
    const s = wh.tenant('s');
    const l = wh.tenant('l');
    const ks = chain(4, 's');
    const kl = chain(4, 'l');
    await s.put(ks, blocksFor(ks, BS));
    await l.put(kl, blocksFor(kl, BS));
    expect(s.stats()).toMatchObject({ retention: 'short', ttlMs: 5 * MIN });
    now += 4 * MIN;
    const dst = Buffer.alloc(4 * BS);
    expect((await s.get(ks.slice(2), dst)).count).toBe(2); // a hit: their time starts again
    // A lease is a use too (an engine pins what it is about to read), and keeps the block
    // past its time while it lasts.
    const lease = s.pin(ks.slice(1, 2), { ttlMs: 10 * MIN });
    now += 2 * MIN;
    // Six minutes after the put: 0 is past its time; lookup no longer reports it.
    expect(s.lookup(ks).tiers).toEqual([-1, 0, 0, 0]);
    expect((await s.get(ks, dst)).found).toEqual([false, true, true, true]);
    expect(s.stats().expired).toEqual(count(1));
    expect(wh.lookup(wh.keys()).prefix).toBe(7); // the operator sees it gone too
    now += 5 * MIN; // 1 is due now, but held: kept, its time starts again
    expect((await s.get(ks.slice(1, 2), dst)).count).toBe(1);
    s.unpin(lease);
    now += 61 * MIN;
    expect((await l.get(kl, dst)).count).toBe(0);
    expect(l.stats().expired).toEqual(count(4));
    expect((await s.get(ks, dst)).count).toBe(0);
    expect(s.stats().expired).toEqual(count(4));
    expect(s.stats().evicted).toEqual(count(0));
    expect(wh.keys()).toEqual([]);
    await wh.close();
  });
});

describe('tenants: retention without operations', () => {
  it('expires an idle warehouse on its one timer', async () => {
    // Only setTimeout is faked: the timer is advanced by hand, and nothing sleeps.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      let now = 0;
      const wh = await open({
        now: () => now,
        retentionClasses: { s: 1000 },
        tenants: [{ name: 's', retention: 's' }],
      });
      const keys = chain(2, 's');
      await wh.tenant('s').put(keys, blocksFor(keys, BS));
      now = 999;
      vi.advanceTimersByTime(999);
      expect(wh.keys()).toHaveLength(2);
      now = 1000;
      vi.advanceTimersByTime(1);
      // keys() does not sweep: only the timer can have removed them (stats() is asked only
      // once they are gone, since it would sweep too).
      const s = wh.tenant('s');
      for (let i = 0; i < 1000 && (wh.keys().length > 0 || s.stats().expired.blocks < 2); i++) {
        await new Promise((r) => setImmediate(r));
      }
      expect(wh.keys()).toEqual([]);
      expect(wh.tenant('s').stats().expired).toEqual(count(2));
      await wh.close();
    } finally {
      vi.useRealTimers();
    }
  });

  it('starts the time of blocks found on disk at the open, and keeps quotas over them', async () => {
    const d = dir();
    let now = 0;
    const options = (): WarehouseOptions => ({
      blockBytes: BS,
      tiers: [{ kind: 'file', dir: d, bytes: 16 * BS }],
      tenancy: {
        blockTokens: TOKENS,
        now: () => now,
        retentionClasses: { s: 1000 },
        tenants: [{ name: 's', retention: 's', quota: { file: { bytes: 4 * BS } } }],
      },
    });
    let wh = await Warehouse.open(options());
    const keys = chain(6, 's');
    const first = keys.slice(0, 4);
    const then = keys.slice(4);
    expect((await wh.tenant('s').put(first, blocksFor(first, BS))).stored).toBe(4);
    expect((await wh.tenant('s').put(then, blocksFor(then, BS))).stored).toBe(2);
    expect(wh.tenant('s').stats().tiers[0]!.blocks).toBe(4);
    await wh.close();
    now = 5000; // long past their time, but unknown to the reopened store
    wh = await Warehouse.open(options());
    const s = wh.tenant('s');
    expect(s.stats().tiers[0]!.blocks).toBe(4);
    expect(s.lookup(keys).tiers.filter((t) => t === 0)).toHaveLength(4);
    // The quota still holds over what was found: two more take the place of two of those.
    const more = chain(2, 's2');
    expect((await s.put(more, blocksFor(more, BS))).stored).toBe(2);
    expect(s.stats().tiers[0]!.blocks).toBe(4);
    expect(s.stats().evicted).toEqual(count(2));
    expect(s.lookup(keys).tiers.filter((t) => t === 0)).toHaveLength(2);
    now = 5999;
    expect(s.lookup(keys).tiers.filter((t) => t === 0)).toHaveLength(2);
    now = 6000;
    expect(s.lookup(keys).prefix).toBe(0);
    expect((await s.get(keys, Buffer.alloc(6 * BS))).count).toBe(0);
    expect(s.lookup(more).prefix).toBe(0);
    expect(s.stats().expired).toEqual(count(4));
    expect(s.stats().tiers[0]!.blocks).toBe(0);
    await wh.close();
  });
});

describe('tenants: bad input', () => {
  it('refuses unknown tenants and bad configurations with typed errors, opening nothing', async () => {
    const wh = await open({ tenants: [{ name: 'a' }] });
    await rejects(() => wh.tenant('b'), 'KVTIER_UNKNOWN_TENANT');
    await rejects(() => wh.tenant(42 as unknown as string), 'KVTIER_UNKNOWN_TENANT');
    expect(wh.tenants()).toEqual(['a']);
    await rejects(() => wh.tenant('a').unpin(null as never), 'KVTIER_BAD_ARGUMENT');
    await rejects(wh.tenant('a').put(['zz'], Buffer.alloc(BS)), 'KVTIER_BAD_ARGUMENT');
    expect(wh.keys()).toEqual([]);
    await wh.close();

    const d = join(dir(), 'never');
    const tiers: TierOptions[] = [{ kind: 'file', dir: d, bytes: 8 * BS }];
    const bad: [unknown, RegExp][] = [
      [{ tenants: [{ name: 'a', retention: 'gold' }] }, /no retention class "gold"/],
      [{ tenants: [{ name: 'a', quota: { host: { bytes: BS } } }] }, /not a local tier/],
      [{ tenants: [{ name: 'a', quota: { file: { share: 2 } } }] }, /share/],
      [{ tenants: [{ name: 'a', quota: { file: { bytes: 1, share: 0.5 } } }] }, /bytes/],
      [{ tenants: [{ name: 'a' }, { name: 'a' }] }, /named twice/],
      [{ tenants: [{ name: 'a b' }] }, /name/],
      [{ tenants: [{ name: 'a', minPrefixTokens: -1 }] }, /minPrefixTokens/],
      [{ tenants: [{ name: 'a' }], secret: Buffer.alloc(4) }, /secret/],
      [{ tenants: [], retentionClasses: { x: 0 } }, /retentionClasses/],
      [{ tenants: 'a' }, /tenants/],
    ];
    for (const [tenancy, message] of bad) {
      const m = await rejects(
        Warehouse.open({
          blockBytes: BS,
          tiers,
          tenancy: { blockTokens: TOKENS, ...(tenancy as object) } as TenancyOptions,
        }),
        'KVTIER_BAD_ARGUMENT',
      );
      expect(m).toMatch(message);
      expect(existsSync(d)).toBe(false);
    }
  });
});
