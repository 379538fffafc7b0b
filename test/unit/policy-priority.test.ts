import { describe, expect, it } from 'vitest';

import { policyByName } from '../../lib/policy/index.js';
import type { AccessInfo } from '../../lib/policy/policy.js';

const at = (now: number, priority = 0): AccessInfo => ({ now, priority, depth: 0, chainLength: 1 });

describe('priorities', () => {
  for (const name of ['lru', 'arc-tree']) {
    it(`${name}: evicts every lower-priority block before a higher one, and LRU order within`, () => {
      const p = policyByName<number>(name, 8);
      p.insert(1, at(1, 3));
      p.insert(2, at(2, 0));
      p.insert(3, at(3, 1));
      p.insert(4, at(4, 0));
      expect(p.size).toBe(4);
      const order: number[] = [];
      for (let v = p.victim(); v !== undefined; v = p.victim()) {
        order.push(v);
        p.remove(v);
      }
      expect(order.slice(0, 2).sort()).toEqual([2, 4]);
      expect(order.slice(2)).toEqual([3, 1]);
      expect(p.size).toBe(0);
    });

    it(`${name}: a block touched at a higher priority climbs, and pinned ones are skipped`, () => {
      const p = policyByName<number>(name, 8);
      p.insert(1, at(1));
      p.insert(2, at(2));
      p.touch(1, at(3, 2));
      expect(p.victim()).toBe(2);
      expect(p.victim((k) => k !== 2)).toBe(1);
      p.remove(2);
      p.remove(1);
      expect(p.victim()).toBeUndefined();
    });
  }

  it('changes nothing while every priority is 0', () => {
    const a = policyByName<number>('lru', 4);
    for (let k = 0; k < 4; k++) a.insert(k, at(k));
    a.touch(0, at(5));
    expect(a.victim()).toBe(1);
  });
});
