import { describe, expect, it } from 'vitest';

import { ArcPolicy } from '../../lib/policy/arc.js';
import { DEFAULT_POLICY, policyByName } from '../../lib/policy/index.js';
import type { AccessInfo } from '../../lib/policy/policy.js';
import { ABSENT, BlockIndex, DenseKeyIds, MapKeyIds } from '../../lib/warehouse/block-index.js';

const at = (now: number, depth: number, chainLength: number): AccessInfo => ({
  now,
  priority: 0,
  depth,
  chainLength,
});

/** Replays requests (chains of keys) by the sim's rules; returns prefix hits. */
function replay(index: BlockIndex<number>, requests: number[][]): number {
  let hits = 0;
  requests.forEach((keys, r) => {
    let prefix = true;
    keys.forEach((k, i) => {
      const t = index.access(k, at(r, i, keys.length));
      if (t === ABSENT) prefix = false;
      else if (prefix) hits++;
    });
    keys.forEach((k, i) => index.place(k, 0, at(r, i, keys.length), { length: 1, checksum: 0 }));
  });
  return hits;
}

describe('ArcPolicy on the prefix tree', () => {
  it('evicts the orphans of an evicted block before anything else', () => {
    const p = new ArcPolicy<number>(10, { leafFirst: true, orphans: true });
    // One request places the chain 1 → 2 → 3, a later one the chain 7 → 8.
    [1, 2, 3].forEach((k, i) => p.insert(k, at(0, i, 3)));
    [7, 8].forEach((k, i) => p.insert(k, at(1, i, 2)));
    // Leaf first: the deepest block of the oldest request goes first.
    expect(p.victim()).toBe(3);
    // Evicting the root 1 (e.g. by another tier's decision) orphans 2, and then 3.
    p.remove(1);
    expect(p.victim()).toBe(2);
    p.remove(2);
    expect(p.victim()).toBe(3);
    p.remove(3);
    expect(p.victim()).toBe(8);
    expect(p.size).toBe(2);
  });

  it('keeps often-used blocks in a protected part', () => {
    const p = new ArcPolicy<number>(4, { frequent: 3 });
    for (let r = 0; r < 3; r++) p.insert(1, at(r, 0, 1)); // three requests use block 1
    p.insert(2, at(3, 0, 1));
    p.touch(2, at(4, 0, 1)); // seen twice: T2, not protected
    p.insert(3, at(5, 0, 1));
    p.touch(3, at(6, 0, 1));
    // T1 is empty, so the victim comes from T2 (2, then 3) before the protected block 1.
    expect(p.victim()).toBe(2);
    p.remove(2);
    expect(p.victim()).toBe(3);
    p.remove(3);
    expect(p.victim()).toBe(1);
  });

  it('the default policy keeps the index consistent and never loses to LRU on a looping workload', () => {
    const requests: number[][] = [];
    // Sessions that grow one chain each, visited round-robin: LRU thrashes when they do not fit.
    for (let round = 0; round < 30; round++) {
      for (let s = 0; s < 6; s++) {
        const len = 4 + round;
        requests.push(Array.from({ length: len }, (_, i) => s * 1000 + i));
      }
    }
    const run = (policy: string, ids: 'dense' | 'map'): number => {
      const index = new BlockIndex<number>(
        [{ name: 'c', capacity: 60, policy: policyByName<number>(policy, 60) }],
        { ids: ids === 'dense' ? new DenseKeyIds(16) : new MapKeyIds<number>() },
      );
      const hits = replay(index, requests);
      expect(index.tiers[0]!.used).toBe(index.tiers[0]!.policy.size);
      expect(index.size).toBe(index.tiers[0]!.used);
      return hits;
    };
    const lru = run('lru', 'map');
    const def = run(DEFAULT_POLICY, 'dense');
    expect(run(DEFAULT_POLICY, 'map')).toBe(def);
    expect(def).toBeGreaterThanOrEqual(lru);
  });
});

describe('DenseKeyIds', () => {
  it('uses keys as ids, grows, and lists what is present', () => {
    const ids = new DenseKeyIds(4);
    expect(ids.get(2)).toBe(-1);
    expect(ids.add(2)).toBe(2);
    expect(ids.add(5000)).toBe(5000);
    expect(ids.size).toBe(2);
    expect([...ids.ids()]).toEqual([2, 5000]);
    ids.delete(2, 2);
    expect(ids.get(2)).toBe(-1);
    expect(ids.size).toBe(1);
    expect(() => ids.add(-1)).toThrow(RangeError);
  });
});
