import { openSync, writeSync, closeSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import {
  chainKeys,
  KvtierError,
  Region,
  Warehouse,
  type WarehouseOptions,
} from '../../lib/index.js';
import { probe } from '../../lib/core/probe.js';
import { blockFor, blocksFor } from '../blocks.js';
import { prerequisite, tempDir } from '../helpers.js';

const BS = 16 * 1024;
const dirs: { remove(): void }[] = [];
afterAll(() => dirs.forEach((d) => d.remove()));
function dir(): string {
  const d = tempDir('kvtier-wh-');
  dirs.push(d);
  return d.path;
}

function chain(n: number, namespace = 'test', offset = 0): string[] {
  const tokens = Uint32Array.from({ length: n * 4 }, (_, i) => i + offset);
  return chainKeys(tokens, { blockTokens: 4, namespace }).keys();
}

async function open(
  options: Partial<WarehouseOptions> & { dir?: string } = {},
): Promise<Warehouse> {
  const d = options.dir ?? dir();
  return Warehouse.open({
    blockBytes: BS,
    tiers: [
      { kind: 'host', bytes: 8 * BS },
      { kind: 'file', dir: d, bytes: 64 * BS },
    ],
    ...options,
  });
}

describe('Warehouse', () => {
  it('stores, finds and returns blocks bit for bit, spilling past the top tier', async () => {
    const wh = await open();
    const keys = chain(20);
    const src = blocksFor(keys, BS);
    const first = await wh.put(keys, src);
    expect(first).toEqual({
      stored: 20,
      present: 0,
      rejected: 0,
      status: keys.map(() => 'stored'),
      // Where each block went: nothing moved since, so where lookup finds it.
      tiers: wh.lookup(keys).tiers,
    });
    expect(first.tiers!.filter((t) => t === 0)).toHaveLength(8);
    expect(await wh.put(keys, src)).toEqual({
      stored: 0,
      present: 20,
      rejected: 0,
      status: keys.map(() => 'present'),
      tiers: keys.map(() => -1),
    });
    const look = wh.lookup(keys);
    expect(look.prefix).toBe(20);
    expect(look.tiers.filter((t) => t === 0)).toHaveLength(8);
    const dst = Region.allocate(20 * BS);
    const got = await wh.get(keys, dst);
    expect(got.count).toBe(20);
    expect(Buffer.compare(Buffer.from(dst.view()), src)).toBe(0);
    const s = wh.stats();
    expect(s.hits).toBe(20);
    expect(s.tiers[0]!.usedBlocks + s.tiers[1]!.usedBlocks).toBe(20);
    await dst.close();
    await wh.close();
  });

  it('reports missing blocks as missing, not as errors, and the cached prefix', async () => {
    const wh = await open();
    const keys = chain(6);
    await wh.put(keys.slice(0, 3), blocksFor(keys.slice(0, 3), BS));
    const dst = Buffer.alloc(6 * BS, 0xaa);
    const got = await wh.get(keys, dst);
    expect(got.found).toEqual([true, true, true, false, false, false]);
    expect(got.prefix).toBe(3);
    expect(dst.subarray(3 * BS).every((b) => b === 0xaa)).toBe(true);
    expect(wh.stats().misses).toBe(3);
    await wh.close();
  });

  it('evicts LRU blocks down to the file tier and promotes them back on get', async () => {
    const wh = await open({ policy: 'lru' });
    const keys = chain(12);
    for (const k of keys) await wh.put([k], blockFor(k, BS));
    // The first four were evicted from host (capacity 8) and demoted to the file tier.
    expect(wh.lookup(keys).tiers).toEqual([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    const s = wh.stats();
    expect(s.tiers[0]!.evictions).toBe(4);
    expect(s.tiers[1]!.demotions).toBe(4);
    const dst = Buffer.alloc(BS);
    expect((await wh.get([keys[0]!], dst)).tiers).toEqual([1]);
    expect(Buffer.compare(dst, blockFor(keys[0]!, BS))).toBe(0);
    expect(wh.lookup([keys[0]!]).tiers).toEqual([0]);
    expect(wh.stats().tiers[0]!.promotions).toBe(1);
    await wh.close();
  });

  it('keeps higher-priority blocks (a shared system prompt) over one-off blocks', async () => {
    const wh = await open();
    const system = chain(3, 'system');
    await wh.put(system, blocksFor(system, BS), { priority: 5 });
    for (const k of chain(30, 'one-off')) await wh.put([k], blockFor(k, BS));
    // Thirty one-off blocks passed through an 8-block host tier; the system prompt stayed.
    expect(wh.lookup(system).tiers).toEqual([0, 0, 0]);
    await wh.close();
  });

  it('keeps its accounting when one get names a lower-tier key twice', async () => {
    const wh = await open({ policy: 'lru' });
    const keys = chain(12);
    for (const k of keys) await wh.put([k], blockFor(k, BS));
    const cold = keys[0]!;
    expect(wh.lookup([cold]).tiers).toEqual([1]);
    const dst = Buffer.alloc(2 * BS);
    for (let r = 0; r < 3; r++) {
      expect((await wh.get([cold, cold], dst)).count).toBe(2);
      await wh.evict([cold]);
      await wh.put([cold], blockFor(cold, BS));
      for (const k of chain(8, 'churn', r * 100)) await wh.put([k], blockFor(k, BS));
    }
    const s = wh.stats();
    let inHost = 0;
    for (const t of wh.lookup([...keys, ...chain(8, 'churn', 200)]).tiers) if (t === 0) inHost++;
    expect(s.tiers[0]!.usedBlocks).toBeLessThanOrEqual(8);
    expect(s.tiers[0]!.usedBlocks).toBeGreaterThanOrEqual(inHost);
    await wh.close();
  });

  it('gives back what a failed put reserved', async () => {
    const wh = await open({ tiers: [{ kind: 'host', bytes: 2 * BS }] });
    for (let r = 0; r < 3; r++) {
      const keys = chain(2, `fail-${r}`);
      const src = new Uint8Array(new ArrayBuffer(2 * BS));
      const put = wh.put(keys, src);
      structuredClone(src.buffer, { transfer: [src.buffer] }); // detached before the copy runs
      await expect(put).rejects.toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
    }
    expect(wh.stats().tiers[0]!.usedBlocks).toBe(0);
    const keys = chain(2, 'after');
    expect((await wh.put(keys, blocksFor(keys, BS))).stored).toBe(2);
    await wh.close();
  });

  it('keeps a promoted block in its priority class', async () => {
    const wh = await open();
    const vip = chain(1, 'vip');
    await wh.put(vip, blocksFor(vip, BS), { priority: 5 });
    const fillers = chain(8, 'filler');
    for (const k of fillers) await wh.put([k], blockFor(k, BS), { priority: 9 });
    expect(wh.lookup(vip).tiers).toEqual([1]); // pushed down by higher-priority blocks
    await wh.evict(fillers.slice(0, 4)); // room in the host tier again
    await wh.get(vip, Buffer.alloc(BS)); // promoted back
    expect(wh.lookup(vip).tiers).toEqual([0]);
    for (const k of chain(20, 'low')) await wh.put([k], blockFor(k, BS));
    expect(wh.lookup(vip).tiers).toEqual([0]); // still priority 5: outranks the priority-0 blocks
    await wh.close();
  });

  it('refuses a lease longer than a timer can run', async () => {
    const wh = await open();
    expect(() => wh.pin(chain(1), { ttlMs: 30 * 24 * 3600 * 1000 })).toThrow(
      expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }),
    );
    await wh.close();
  });

  it('never evicts pinned blocks, and leases expire by the injected clock', async () => {
    let now = 1_000;
    const wh = await open({ now: () => now });
    const keys = chain(8);
    await wh.put(keys, blocksFor(keys, BS));
    const lease = wh.pin(keys.slice(0, 8), { ttlMs: 60_000 });
    expect(lease.keys).toHaveLength(8);
    expect(lease.expiresAt).toBe(61_000);
    const more = chain(4, 'other');
    expect((await wh.put(more, blocksFor(more, BS))).stored).toBe(4);
    // Every host slot is pinned: the new blocks went to the file tier instead.
    expect(wh.lookup(keys).tiers.every((t) => t === 0)).toBe(true);
    expect(wh.lookup(more).tiers.every((t) => t === 1)).toBe(true);
    // A millisecond before expiry by the warehouse's clock (the wall clock has barely moved, and
    // no timer has fired), the lease still holds.
    now = 60_999;
    expect((await wh.evict(keys.slice(7))).removed).toBe(0);
    // At expiry it is gone, though no wall-clock time passed: the host tier takes new blocks
    // again, pushing the formerly pinned ones down, and evict() may remove them.
    now = 61_000;
    const third = chain(4, 'third');
    expect((await wh.put(third, blocksFor(third, BS))).stored).toBe(4);
    expect(wh.lookup(third).tiers).toEqual([0, 0, 0, 0]);
    expect(wh.lookup(keys).tiers.filter((t) => t === 1)).toHaveLength(4);
    expect((await wh.evict(keys.slice(7))).removed).toBe(1);
    wh.unpin(lease); // already expired: a no-op
    await wh.close();
  });

  it('ends a lease early with unpin()', async () => {
    const wh = await open({ now: () => 0 });
    const keys = chain(2);
    await wh.put(keys, blocksFor(keys, BS));
    const lease = wh.pin(keys, { ttlMs: 60_000 });
    expect(await wh.evict(keys)).toEqual({ removed: 0, status: ['pinned', 'pinned'] });
    wh.unpin(lease);
    const absent = chain(1, 'never-put');
    expect(await wh.evict([keys[0]!, ...absent, keys[1]!, keys[0]!])).toEqual({
      removed: 2,
      status: ['removed', 'absent', 'removed', 'removed'],
    });
    await wh.close();
  });

  it('drops a corrupt block on read, counts it, and never returns it', async () => {
    const d = dir();
    const wh = await open({ dir: d, tiers: [{ kind: 'file', dir: d, bytes: 16 * BS }] });
    const keys = chain(4);
    await wh.put(keys, blocksFor(keys, BS));
    await wh.close();
    // Flip one byte in the payload of some slot.
    const meta = JSON.parse(readFileSync(join(d, 'kvtier.meta.json'), 'utf8')) as {
      payloadOffset: number;
    };
    const fd = openSync(join(d, 'blocks.kvt'), 'r+');
    writeSync(fd, Buffer.from([0x5a ^ 0xff]), 0, 1, meta.payloadOffset + 100);
    closeSync(fd);
    const again = await open({ dir: d, tiers: [{ kind: 'file', dir: d, bytes: 16 * BS }] });
    expect(again.lookup(keys).prefix).toBe(4);
    const dst = Buffer.alloc(4 * BS);
    const got = await again.get(keys, dst);
    expect(got.count).toBe(3);
    expect(again.stats().corrupt).toBe(1);
    got.found.forEach((f, i) => {
      if (f)
        expect(Buffer.compare(dst.subarray(i * BS, (i + 1) * BS), blockFor(keys[i]!, BS))).toBe(0);
    });
    expect(again.lookup(keys).prefix).toBeLessThan(4);
    await again.close();
  });

  it('survives a restart with the file tier, and refuses a second opener', async () => {
    const d = dir();
    const wh = await open({ dir: d, writeThrough: true, durability: 'sync' });
    const keys = chain(10);
    await wh.put(keys, blocksFor(keys, BS));
    const error = await open({ dir: d }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'KVTIER_LOCKED' });
    await wh.close();
    const again = await open({ dir: d });
    expect(again.lookup(keys).tiers.every((t) => t === 1)).toBe(true);
    const dst = Buffer.alloc(10 * BS);
    expect((await again.get(keys, dst)).count).toBe(10);
    expect(Buffer.compare(dst, blocksFor(keys, BS))).toBe(0);
    await again.close();
  });

  it('writes host-only blocks down on close, so a write-back warehouse restarts warm', async () => {
    const d = dir();
    const wh = await open({ dir: d });
    const keys = chain(5);
    await wh.put(keys, blocksFor(keys, BS));
    expect(wh.lookup(keys).tiers).toEqual([0, 0, 0, 0, 0]);
    await wh.close();
    const again = await open({ dir: d });
    expect(again.lookup(keys).tiers).toEqual([1, 1, 1, 1, 1]);
    const dst = Buffer.alloc(5 * BS);
    expect((await again.get(keys, dst)).count).toBe(5);
    expect(Buffer.compare(dst, blocksFor(keys, BS))).toBe(0);
    await again.close();
  });

  it('forgets evicted blocks on disk too', async () => {
    const d = dir();
    const wh = await open({ dir: d, writeThrough: true });
    const keys = chain(3);
    await wh.put(keys, blocksFor(keys, BS));
    expect((await wh.evict([keys[1]!])).removed).toBe(1);
    expect(wh.lookup(keys).tiers).toEqual([0, -1, 0]);
    await wh.close();
    const again = await open({ dir: d });
    expect(again.lookup(keys).tiers).toEqual([1, -1, 1]);
    await again.close();
  });

  it('prefetches blocks up to the top tier, by priority, and honours abort', async () => {
    const wh = await open();
    const keys = chain(12);
    for (const k of keys) await wh.put([k], blockFor(k, BS));
    const r = await wh.prefetch(keys.slice(0, 2), { to: 'host' });
    expect(r).toEqual({ moved: 2, alreadyThere: 0, missing: 0 });
    expect(wh.lookup(keys.slice(0, 2)).tiers).toEqual([0, 0]);
    const ac = new AbortController();
    ac.abort();
    await expect(wh.prefetch(keys, { signal: ac.signal })).rejects.toMatchObject({
      name: 'AbortError',
    });
    const late = await wh.prefetch(keys.slice(2, 3), { deadline: 0 }).catch((e: unknown) => e);
    expect(late).toMatchObject({ code: 'KVTIER_ABORTED' });
    expect((await wh.prefetch(chain(1, 'nobody'))).missing).toBe(1);
    await wh.close();
  });

  it('runs queued prefetches highest priority first, one block in flight at a time', async () => {
    // One block of prefetch bytes in flight: the first prefetch runs at once, the others queue
    // behind it and must then start (and so finish) by priority, equal ones in arrival order.
    const wh = await open({ prefetchBytes: BS });
    const keys = chain(16);
    for (const k of keys) await wh.put([k], blockFor(k, BS));
    const cold = keys.slice(0, 5);
    expect(wh.lookup(cold).tiers).toEqual([1, 1, 1, 1, 1]);
    const finished: string[] = [];
    const queue = (name: string, key: string, priority: number): Promise<void> =>
      wh.prefetch([key], { to: 'host', priority }).then((r) => {
        expect(r.moved, name).toBe(1);
        finished.push(name);
      });
    await Promise.all([
      queue('first', cold[0]!, 0),
      queue('low', cold[1]!, 1),
      queue('high', cold[2]!, 9),
      queue('middle', cold[3]!, 5),
      queue('low too', cold[4]!, 1),
    ]);
    expect(finished).toEqual(['first', 'high', 'middle', 'low', 'low too']);
    expect(wh.lookup(cold).tiers).toEqual([0, 0, 0, 0, 0]);
    await wh.close();
  });

  it('joins concurrent puts and gets of the same keys', async () => {
    const wh = await open();
    const keys = chain(6);
    const src = blocksFor(keys, BS);
    const dst = Buffer.alloc(6 * BS);
    const [a, b, g] = await Promise.all([wh.put(keys, src), wh.put(keys, src), wh.get(keys, dst)]);
    expect(a.stored + b.stored).toBe(6);
    expect(a.present + b.present).toBe(6);
    // The get waited for the put of the same keys, so it finds them all.
    expect(g.count).toBe(6);
    expect(Buffer.compare(dst, src)).toBe(0);
    await wh.close();
  });

  it('rejects bad input with clear codes and stays usable', async () => {
    const wh = await open();
    const keys = chain(2);
    const bad: [string, () => unknown][] = [
      ['short src', () => wh.put(keys, Buffer.alloc(BS))],
      ['short key', () => wh.put(['abcd'], Buffer.alloc(BS))],
      ['long key', () => wh.put([Buffer.alloc(33)], Buffer.alloc(BS))],
      ['non-hex key', () => wh.put(['z'.repeat(64)], Buffer.alloc(BS))],
      ['short dst', () => wh.get(keys, Buffer.alloc(BS))],
      ['bad ttl', () => wh.pin(keys, { ttlMs: -1 })],
      ['unknown tier', () => wh.prefetch(keys, { to: 'gpu' })],
      ['malformed key in lookup', () => wh.lookup([keys[0]!, 'not-a-key'])],
    ];
    for (const [what, call] of bad) {
      let error: unknown;
      try {
        await call();
      } catch (e) {
        error = e;
      }
      expect(error, what).toBeInstanceOf(KvtierError);
      expect((error as KvtierError).code, what).toBe('KVTIER_BAD_ARGUMENT');
    }
    expect(wh.stats().blocks).toBe(0);
    expect((await wh.put(keys, blocksFor(keys, BS))).stored).toBe(2);
    // Keys in upper case or as bytes name the same blocks.
    expect(wh.lookup([keys[0]!.toUpperCase(), Buffer.from(keys[1]!, 'hex')]).prefix).toBe(2);
    await wh.close();
    await expect(wh.put(keys, blocksFor(keys, BS))).rejects.toMatchObject({
      code: 'KVTIER_CLOSED',
    });
  });

  it('refuses bad configurations and foreign directories without touching them', async () => {
    const bad: Partial<WarehouseOptions>[] = [
      { blockBytes: 0 },
      { blockBytes: -5 },
      { tiers: [] },
      { tiers: [{ kind: 'host', bytes: 0 }] },
      { tiers: [{ kind: 'file', dir: dir(), bytes: 1 }] },
      {
        tiers: [
          { kind: 'file', dir: dir(), bytes: 4 * BS },
          { kind: 'host', bytes: 4 * BS },
        ],
      },
    ];
    for (const options of bad) {
      await expect(open(options)).rejects.toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
    }
    const d = dir();
    const first = await open({ dir: d });
    await first.close();
    const mismatch = (await open({ dir: d, blockBytes: BS * 2 }).catch((e: unknown) => e)) as Error;
    expect(mismatch).toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
    expect(mismatch.message).toMatch(/blockBytes/);
    const metaPath = join(d, 'kvtier.meta.json');
    const meta = readFileSync(metaPath, 'utf8');
    writeFileSync(metaPath, meta.replace('"version": 1', '"version": 99'));
    await expect(open({ dir: d })).rejects.toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
    expect(readFileSync(metaPath, 'utf8')).toContain('"version": 99');
    await expect(
      open({ tiers: [{ kind: 'file', dir: '/proc/kvtier-cannot-exist', bytes: 4 * BS }] }),
    ).rejects.toMatchObject({ code: 'KVTIER_IO' });
  });
});

describe('Warehouse GPU tier options', () => {
  it('refuses a GPU tier below another tier', async () => {
    await expect(
      Warehouse.open({
        blockBytes: BS,
        tiers: [
          { kind: 'host', bytes: 8 * BS },
          { kind: 'gpu', bytes: 8 * BS },
        ],
      }),
    ).rejects.toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
  });

  it('says why a GPU tier cannot open without a GPU, and leaves nothing open', async ({ skip }) => {
    const noGpu = !probe().cuda.available;
    // On a GPU host test/gpu/warehouse.test.ts covers a working GPU tier instead.
    if (!prerequisite(noGpu, 'a CUDA GPU is present, so a GPU tier opens', 'hardware')) skip();
    await expect(
      Warehouse.open({
        blockBytes: BS,
        tiers: [
          { kind: 'gpu', bytes: 8 * BS },
          { kind: 'host', bytes: 8 * BS },
        ],
      }),
    ).rejects.toMatchObject({ code: 'KVTIER_NOT_AVAILABLE' });
  });
});
