import { describe, expect, it } from 'vitest';

import { KeyLists } from '../../lib/policy/list.js';

describe('KeyLists', () => {
  it('a freed small integer key is not found, even once its node names another key', () => {
    const l = new KeyLists<number>(2);
    const a = l.add(7, 0);
    expect(l.find(7)).toBe(a);
    l.free(a);
    expect(l.find(7)).toBe(0);
    // The freed node is reused for key 9: key 7's stale index slot must not find it.
    const b = l.add(9, 1);
    expect(b).toBe(a);
    expect(l.find(9)).toBe(b);
    expect(l.find(7)).toBe(0);
    // Key 7 comes back on a node of its own.
    const c = l.add(7, 0);
    expect(l.find(7)).toBe(c);
    expect(l.find(9)).toBe(b);
    expect(l.sizes[0]).toBe(1);
    expect(l.sizes[1]).toBe(1);
  });

  it('freed Map keys (strings, negative, fractional, NaN) are forgotten too', () => {
    const l = new KeyLists<string | number>(1);
    for (const k of ['x', -3, 2.5, Number.NaN]) {
      const n = l.add(k, 0);
      expect(l.find(k)).toBe(n);
      l.free(n);
      expect(l.find(k)).toBe(0);
    }
    expect(l.head(0)).toBe(0);
  });

  it('many keys freed and re-added in turn are each found on their current node only', () => {
    const l = new KeyLists<number>(1);
    const live = new Map<number, number>();
    let seed = 12345;
    const rand = (m: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % m;
    };
    for (let i = 0; i < 5000; i++) {
      const k = rand(300);
      const n = live.get(k);
      if (n === undefined) live.set(k, l.add(k, 0));
      else {
        l.free(n);
        live.delete(k);
      }
    }
    for (let k = 0; k < 300; k++) expect(l.find(k)).toBe(live.get(k) ?? 0);
    expect(l.sizes[0]).toBe(live.size);
  });
});
