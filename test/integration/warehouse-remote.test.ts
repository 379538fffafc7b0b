/**
 * The Warehouse's hooks for the cluster: a remote source consulted on a local miss (setRemote),
 * and the change feed a cluster node publishes from (watch).
 */
import { describe, expect, it } from 'vitest';

import type { Target } from '../../lib/core/engine.js';
import { chainKeys, type Key } from '../../lib/keys/keys.js';
import { Warehouse, type BlockSource } from '../../lib/warehouse/warehouse.js';

const BS = 4096;

function chain(n: number, seed: number): Key[] {
  return chainKeys(
    Array.from({ length: n * 4 }, (_, i) => i + seed * 1000),
    { blockTokens: 4 },
  ).keys();
}

function content(n: number, base: number): Buffer {
  const b = Buffer.alloc(n * BS);
  for (let i = 0; i < n; i++) b.fill(base + i, i * BS, (i + 1) * BS);
  return b;
}

/** A source backed by another warehouse, the way a peer would be. */
function sourceOf(other: Warehouse, calls: Key[][]): BlockSource {
  return {
    async fetch(keys: readonly Key[], dst: Target, at: readonly number[]): Promise<boolean[]> {
      calls.push([...keys]);
      const tmp = Buffer.alloc(keys.length * BS);
      const r = await other.get(keys, tmp, { remote: false });
      const out = dst as Buffer;
      r.found.forEach((f, j) => {
        if (f) tmp.copy(out, at[j]! * BS, j * BS, (j + 1) * BS);
      });
      return r.found;
    },
    stats: () => ({ state: 'ok', degraded: false, source: 'test' }),
  };
}

describe('Warehouse remote source and change feed', () => {
  it('fetches local misses, keeps them, reports them, and leaves local hits alone', async () => {
    const a = await Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: 64 * BS }] });
    const b = await Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: 64 * BS }] });
    try {
      const keys = chain(6, 1);
      const data = content(6, 1);
      await a.put(keys, data);
      await b.put(keys.slice(0, 2), data.subarray(0, 2 * BS));
      const calls: Key[][] = [];
      const added: Key[] = [];
      const stop = b.watch((x) => added.push(...x));
      b.setRemote(sourceOf(a, calls));

      // A key named twice, and one nobody has.
      const stranger = chain(1, 9)[0]!;
      const ask = [...keys, keys[4]!, stranger];
      const dst = Buffer.alloc(ask.length * BS);
      const r = await b.get(ask, dst);
      expect(r.found).toEqual([true, true, true, true, true, true, true, false]);
      expect(r.tiers).toEqual([0, 0, 1, 1, 1, 1, 1, -1]);
      expect(dst.subarray(0, 6 * BS).equals(data)).toBe(true);
      expect(dst.subarray(6 * BS, 7 * BS).equals(data.subarray(4 * BS, 5 * BS))).toBe(true);
      // Only the misses were asked for, each once.
      expect(calls).toEqual([[...keys.slice(2), stranger]]);
      expect(b.stats()).toMatchObject({ remoteHits: 4, cluster: { source: 'test' } });
      // Kept locally and announced.
      expect(b.lookup(keys).prefix).toBe(6);
      expect(new Set(added)).toEqual(new Set(keys.slice(2)));
      stop();

      // Now local: the source is not asked again.
      calls.length = 0;
      expect((await b.get(keys, Buffer.alloc(6 * BS))).count).toBe(6);
      expect(calls).toEqual([]);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('does not ask with remote: false, and does not keep with promote: false', async () => {
    const a = await Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: 16 * BS }] });
    const b = await Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: 16 * BS }] });
    try {
      const keys = chain(3, 2);
      await a.put(keys, content(3, 50));
      const calls: Key[][] = [];
      b.setRemote(sourceOf(a, calls));
      expect((await b.get(keys, Buffer.alloc(3 * BS), { remote: false })).count).toBe(0);
      expect(calls).toEqual([]);
      const r = await b.get(keys, Buffer.alloc(3 * BS), { promote: false });
      expect(r.count).toBe(3);
      expect(b.lookup(keys).prefix).toBe(0);
      b.setRemote(undefined);
      expect((await b.get(keys, Buffer.alloc(3 * BS))).count).toBe(0);
      expect(b.stats().cluster).toBeUndefined();
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('reports blocks leaving the warehouse: eviction out of the last tier and evict()', async () => {
    const w = await Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: 4 * BS }] });
    try {
      const changes: { added: Key[]; removed: Key[] }[] = [];
      w.watch((added, removed) => changes.push({ added: [...added], removed: [...removed] }));
      const keys = chain(6, 3);
      await w.put(keys.slice(0, 4), content(4, 1));
      await w.put(keys.slice(4), content(2, 5));
      const removedByPut = changes[1]!.removed;
      expect(changes[1]!.added).toEqual(keys.slice(4));
      expect(removedByPut.length).toBe(2);
      for (const k of removedByPut) expect(w.lookup([k]).prefix).toBe(0);
      const held = w.keys();
      expect(held.length).toBe(4);
      expect((await w.evict(held.slice(0, 1))).removed).toBe(1);
      expect(changes.at(-1)).toEqual({ added: [], removed: held.slice(0, 1) });
      // A listener that throws does not fail the operation.
      w.watch(() => {
        throw new Error('listener bug');
      });
      expect((await w.put(chain(1, 4), content(1, 9))).stored).toBe(1);
    } finally {
      await w.close();
    }
  });
});
