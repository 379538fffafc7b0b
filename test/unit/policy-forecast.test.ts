import { describe, expect, it } from 'vitest';

import { policyByName } from '../../lib/policy/index.js';
import type { AccessInfo } from '../../lib/policy/policy.js';
import { ReturnTimePolicy } from '../../lib/policy/return-time.js';

let request = 0;

/** One request by the sim's rules, straight on a policy: reads what is resident, places the rest. */
function send(
  p: ReturnTimePolicy<number>,
  now: number,
  keys: number[],
  resident: Set<number>,
): void {
  request++;
  const at = (depth: number): AccessInfo => ({
    now,
    priority: 0,
    depth,
    chainLength: keys.length,
    request,
  });
  keys.forEach((k, i) => (resident.has(k) ? p.touch(k, at(i)) : p.miss(k, at(i))));
  keys.forEach((k, i) => {
    if (resident.has(k)) p.touch(k, at(i));
    else {
      p.insert(k, at(i));
      resident.add(k);
    }
  });
}

/**
 * A policy whose curves say: a first turn (class 0) never comes back; a conversation in its
 * second quick turn (class 2: previous gap under 15 s, one quick turn) comes back within 2 s.
 * Then: conversation G (one turn, blocks 100-102), conversation S (two quick turns, blocks 1-4),
 * an unrelated request (50, still resident); G's and S's blocks evicted deepest first.
 */
function setUp(): { p: ReturnTimePolicy<number>; resident: Set<number> } {
  const p = new ReturnTimePolicy<number>(100);
  for (let i = 0; i < 300; i++) {
    p.model.censored(0, 3_600_000);
    p.model.returned(2, 2000);
  }
  p.model.rebuild();
  const resident = new Set<number>();
  send(p, 0, [100, 101, 102], resident);
  send(p, 1000, [1, 2], resident);
  send(p, 3000, [1, 2, 3, 4], resident);
  send(p, 4000, [50], resident);
  for (const k of [102, 101, 100, 4, 3, 2, 1]) {
    p.remove(k);
    resident.delete(k);
  }
  return { p, resident };
}

describe('ReturnTimePolicy forecast (predictive prefetch)', () => {
  it('puts the group whose class comes back soon before the one whose class is gone, root first', () => {
    const { p, resident } = setUp();
    const out = p.forecast(5000, 100);
    expect(out.slice(0, 4)).toEqual([1, 2, 3, 4]);
    // G may follow (its worth is small but not 0): never before S.
    expect(out.filter((k) => k >= 100)).toEqual(out.slice(4));
    expect(p.worth(1, 5000)).toBeGreaterThan(p.worth(100, 5000));
    expect(p.worth(1, 5000)).toBeGreaterThan(10 * Math.max(p.worth(100, 5000), 1e-12));
    // Never a resident key.
    for (const k of resident) expect(out).not.toContain(k);
  });

  it('is bounded by maxKeys and by the ghosts it scans', () => {
    const { p } = setUp();
    expect(p.forecast(5000, 3)).toEqual([1, 2, 3]);
    expect(p.forecast(5000, 0)).toEqual([]);
    // Scanning only the 4 newest ghosts (1, 2, 3, 4: evicted last) finds nothing of G.
    expect(p.forecast(5000, 100, 4)).toEqual([1, 2, 3, 4]);
  });

  it('knows the worth of what it holds, remembers and does not know', () => {
    const { p } = setUp();
    expect(p.worth(999, 5000)).toBe(-1);
    expect(p.worth(50, 5000)).toBeGreaterThanOrEqual(0);
    // Only 50 is resident: it is the victim, and the victim's worth is its worth.
    expect(p.victim()).toBe(50);
    expect(p.victimWorth(5000)).toBe(p.worth(50, 5000));
  });

  it('stages a forecast key back into its group: not forecast again, evicted deepest first', () => {
    const { p } = setUp();
    expect(p.stage(999, 5000)).toBe(false);
    const before = p.size;
    for (const k of [1, 2, 3, 4]) expect(p.stage(k, 5000)).toBe(true);
    expect(p.size).toBe(before + 4);
    expect(p.stage(1, 5000)).toBe(false); // resident now, not a ghost
    const out = p.forecast(5000, 100);
    for (const k of [1, 2, 3, 4]) expect(out).not.toContain(k);
    // Its group's worth is that of class 2 (back soon): 50 (a first turn) goes first, then S's
    // blocks from the deepest up, as one group.
    expect(p.worth(50, 5000)).toBe(Infinity); // the request being seen: not yet decided
    const victimWorth = p.victimWorth(5000); // decides it (as victim() would)
    expect(victimWorth).toBe(p.worth(50, 5000));
    expect(p.worth(4, 5000)).toBeGreaterThan(victimWorth);
    const order: number[] = [];
    for (let v = p.victim(); v !== undefined; v = p.victim()) {
      order.push(v);
      p.remove(v);
    }
    expect(order).toEqual([50, 4, 3, 2, 1]);
  });

  it('passes through the priority wrapper while every priority is 0; lru does not forecast', () => {
    const rt = policyByName<number>('return-time', 10);
    expect(typeof rt.forecast).toBe('function');
    expect(rt.forecast!(0, 10)).toEqual([]);
    // The priority wrapper declares the member but leaves it unset for a base that lacks it.
    expect(typeof policyByName<number>('lru', 10).forecast).toBe('undefined');
    expect(typeof policyByName<number>('arc-tree', 10).forecast).toBe('undefined');
  });
});
