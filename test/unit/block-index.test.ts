import { describe, expect, it } from 'vitest';

import { ArcPolicy } from '../../lib/policy/arc.js';
import { LruPolicy } from '../../lib/policy/lru.js';
import type { AccessInfo } from '../../lib/policy/policy.js';
import { ABSENT, BlockIndex, type Owners } from '../../lib/warehouse/block-index.js';

const info = (now = 0): AccessInfo => ({ now, priority: 0, depth: 0, chainLength: 1 });
const meta = { length: 10, checksum: 1 };

function index(...caps: number[]): BlockIndex<string> {
  return new BlockIndex<string>(
    caps.map((capacity, i) => ({ name: `t${i}`, capacity, policy: new LruPolicy<string>() })),
  );
}

function put(ix: BlockIndex<string>, key: string, tier = 0): void {
  const plan = ix.plan(key, tier, info());
  expect(plan, key).toBeDefined();
  ix.commit(plan!, info(), meta);
}

/** Every tier's `used` equals the copies it holds and its policy's size, and slots are unique. */
function consistent(ix: BlockIndex<string>): void {
  ix.tiers.forEach((t, i) => {
    const slots = [...ix].map(([, e]) => e.slots[i]!).filter((s) => s !== ABSENT);
    expect(new Set(slots).size, t.name).toBe(slots.length);
    expect(t.used, t.name).toBe(slots.length);
    expect(t.policy.size, t.name).toBe(slots.length);
    expect(slots.length).toBeLessThanOrEqual(t.capacity);
  });
  for (const [, e] of ix) expect(e.busy).toBe(0);
}

describe('BlockIndex', () => {
  it('discard() keeps the victims where their moves put them and frees the reused slot', () => {
    const ix = index(1, 2);
    put(ix, 'a'); // host
    put(ix, 'b', 1); // file, no host copy
    const plan = ix.plan('c', 0, info(1))!; // a leaves host for the file tier
    expect(plan.fresh).toBe(false);
    const slot = plan.slot;
    expect(ix.get('a')!.slots[0]).toBe(slot);
    // The copy into a's old slot failed after writing there: a must not get that slot back.
    ix.discard(plan, info(1));
    expect(ix.get('c')).toBeUndefined();
    expect(ix.get('a')!.slots[0]).toBe(ABSENT);
    expect(ix.get('a')!.slots[1]).not.toBe(ABSENT);
    expect(ix.tiers[0]!.used).toBe(0);
    consistent(ix);
    // The freed slot is handed out again, fresh.
    const next = ix.plan('d', 0, info(2))!;
    expect(next.fresh).toBe(true);
    expect(next.slot).toBe(slot);
    ix.commit(next, info(2), meta);
    consistent(ix);
  });

  it('abort() before anything was written gives the victim its slot back', () => {
    const ix = index(1, 2);
    put(ix, 'a');
    const plan = ix.plan('c', 0, info(1))!;
    ix.abort(plan);
    expect(ix.get('a')!.slots[0]).toBe(plan.slot);
    expect(ix.get('a')!.slots[1]).toBe(ABSENT);
    consistent(ix);
  });

  it('leaves no ghost of a key that was never really there (claimed placeholders, aborted plans)', () => {
    const arc = new ArcPolicy<string>(4, { leafFirst: true, orphans: true });
    const ix = new BlockIndex<string>([{ name: 'host', capacity: 4, policy: arc }]);
    const known = (k: string): boolean =>
      (arc as unknown as { l: { find(k: string): number } }).l.find(k) !== 0;
    for (let i = 0; i < 4; i++) put(ix, `k${i}`);
    // A peer server's landing: slots claimed under placeholder names, then adopted by real keys.
    const plans = [0, 1].map((i) => ix.plan(`landing ${i}`, 0, info())!);
    plans.forEach((p, i) => ix.adopt(`p${i}`, 0, ix.claim(p, info()), info(), meta));
    // And a put that is aborted.
    ix.abort(ix.plan('gone', 0, info())!);
    expect(['landing 0', 'landing 1', 'gone'].map(known)).toEqual([false, false, false]);
    // What was evicted for real is remembered (a ghost), as ARC does.
    expect(['k0', 'k1'].map(known)).toEqual([true, true]);
    consistent(ix);
  });

  it('never picks a key with a placement in flight as a victim (no second slot for one key)', () => {
    // K lives in t0 only and a plan gives it a t1 copy (a durable put's write-down); a concurrent
    // plan for X needs room in t0. Demoting K's t0 copy would send K into t1 a second time.
    for (const end of ['commit', 'abort'] as const) {
      const ix = index(1, 4);
      put(ix, 'K');
      const pk = ix.plan('K', 1, info())!;
      expect(pk).toBeDefined();
      const px = ix.plan('X', 0, info());
      expect(px?.moves.some((m) => m.key === 'K') ?? false).toBe(false);
      if (px) ix.abort(px);
      if (end === 'commit') ix.commit(pk, info(), meta);
      else ix.abort(pk);
      consistent(ix);
      expect(ix.get('K')!.slots).toEqual(end === 'commit' ? [0, pk.slot] : [0, ABSENT]);
    }
  });

  it('evicts the LRU block from a full single tier', () => {
    const ix = index(2);
    put(ix, 'a');
    put(ix, 'b');
    ix.access('a', info());
    const plan = ix.plan('c', 0, info())!;
    expect(plan.moves).toEqual([
      expect.objectContaining({ key: 'b', fromTier: 0, toTier: ABSENT }),
    ]);
    expect(plan.fresh).toBe(false);
    ix.commit(plan, info(), meta);
    expect(ix.topTier('b')).toBe(ABSENT);
    expect(ix.topTier('c')).toBe(0);
    expect(ix.tiers[0]!.stats.evictions).toBe(1);
    consistent(ix);
  });

  it('demotes across three tiers and promotes back', () => {
    const ix = index(1, 1, 1);
    put(ix, 'a');
    put(ix, 'b'); // a → t1
    put(ix, 'c'); // b → t1, a → t2
    expect([ix.topTier('a'), ix.topTier('b'), ix.topTier('c')]).toEqual([2, 1, 0]);
    expect(ix.tiers[1]!.stats.demotions).toBe(2);
    expect(ix.tiers[2]!.stats.demotions).toBe(1);
    expect(ix.access('a', info())).toBe(2);
    expect(ix.tiers[0]!.stats.misses).toBe(1);
    put(ix, 'a'); // promote: c → t1, b dropped (t2 holds a, the source of the promotion)
    expect(ix.topTier('a')).toBe(0);
    expect(ix.tiers[0]!.stats.promotions).toBe(1);
    expect(ix.prefix(['a', 'c', 'zz'])).toBe(2);
    consistent(ix);
  });

  it('evicts a block that has a copy lower down without writing it down again', () => {
    const ix = index(1, 2);
    put(ix, 'a', 1);
    put(ix, 'a'); // promoted: host copy over its file copy
    const below = ix.get('a')!.slots[1]!;
    expect(below).not.toBe(ABSENT);
    put(ix, 'b'); // a leaves host; its file copy is enough
    expect(ix.get('a')!.slots).toEqual([ABSENT, below]);
    expect(ix.tiers[1]!.stats.demotions).toBe(0);
    expect(ix.tiers[1]!.used).toBe(1);
    consistent(ix);
  });

  it('never evicts a pinned block, and fails when everything is pinned', () => {
    const ix = index(2);
    put(ix, 'a');
    put(ix, 'b');
    ix.pin('a');
    put(ix, 'c');
    expect(ix.topTier('a')).toBe(0);
    expect(ix.topTier('b')).toBe(ABSENT);
    ix.pin('c');
    expect(ix.plan('d', 0, info())).toBeUndefined();
    consistent(ix);
    ix.unpin('c');
    put(ix, 'd');
    expect(ix.topTier('c')).toBe(ABSENT);
    consistent(ix);
  });

  it('abort rolls back a plan with nested demotions, leaving counts as they were', () => {
    const ix = index(2, 2, 2);
    for (const k of ['a', 'b', 'c', 'd', 'e', 'f']) put(ix, k);
    const before = ix.tiers.map((t) => ({ used: t.used, size: t.policy.size, ...t.stats }));
    const plan = ix.plan('g', 0, info())!;
    expect(plan.moves.length).toBe(3);
    // While planned, the victims are busy: a second plan must pick other ones.
    const other = ix.plan('h', 0, info())!;
    expect(other.moves[other.moves.length - 1]!.key).not.toBe(
      plan.moves[plan.moves.length - 1]!.key,
    );
    ix.abort(other);
    ix.abort(plan);
    expect(ix.tiers.map((t) => ({ used: t.used, size: t.policy.size, ...t.stats }))).toEqual(
      before,
    );
    consistent(ix);
    // And the same plan can then be made and committed.
    put(ix, 'g');
    consistent(ix);
    expect(ix.size).toBe(6);
  });

  it('rolls back when a lower tier cannot take a victim (drops it instead)', () => {
    const ix = index(1, 1);
    put(ix, 'a');
    put(ix, 'b'); // a → t1
    ix.pin('a');
    put(ix, 'c'); // b cannot go down (a pinned in t1): b is dropped
    expect(ix.topTier('b')).toBe(ABSENT);
    expect(ix.topTier('a')).toBe(1);
    consistent(ix);
  });

  it('place() touches a resident key without a plan and inserts a new one', () => {
    const ix = index(2);
    expect(ix.place('a', 0, info(), meta)).toBe(true);
    expect(ix.place('b', 0, info(), meta)).toBe(true);
    expect(ix.place('a', 0, info(), meta)).toBe(true); // a is now most recent
    expect(ix.place('c', 0, info(), meta)).toBe(true);
    expect(ix.topTier('b')).toBe(ABSENT);
    expect(ix.topTier('a')).toBe(0);
    consistent(ix);
  });

  it('remove frees slots and restore/rebuildFreeSlots reuse them', () => {
    const ix = index(4);
    ix.restore('x', 0, 3, meta, info());
    ix.restore('y', 0, 1, meta, info());
    ix.rebuildFreeSlots(0);
    put(ix, 'z');
    put(ix, 'w');
    const slots = [...ix].map(([, e]) => e.slots[0]);
    expect(new Set(slots)).toEqual(new Set([0, 1, 2, 3]));
    expect(ix.remove('x')).toBe(true);
    expect(ix.remove('x')).toBe(false);
    consistent(ix);
  });
});

describe('BlockIndex owners: a discarded plan', () => {
  it('charges each owner the slots its blocks hold after discard(), as after abort()', () => {
    const owners: Owners<string> = {
      count: 2,
      of: (key) => (key.startsWith('x') ? 1 : 0),
      atQuota: () => false,
      victim: (tier, _o, _c, evictable) => ix.tiers[tier]!.policy.victim(evictable),
    };
    const ix = new BlockIndex<string>(
      [1, 2].map((capacity, i) => ({ name: `t${i}`, capacity, policy: new LruPolicy<string>() })),
      { owners },
    );
    const usage = (): number[] => [ix.usage(0, 0), ix.usage(0, 1), ix.usage(1, 0), ix.usage(1, 1)];
    put(ix, 'a');
    ix.abort(ix.plan('x1', 0, info(1))!);
    expect(usage()).toEqual([1, 0, 0, 0]);
    ix.discard(ix.plan('x2', 0, info(2))!, info(2)); // a went down to t1, and stays there
    expect(usage()).toEqual([0, 1, 0, 0]);
    expect(ix.get('a')!.slots).toEqual([ABSENT, expect.any(Number)]);
    put(ix, 'x3');
    expect(usage()).toEqual([0, 1, 1, 0]);
    consistent(ix);
  });
});

describe('BlockIndex owners: blocks that leave', () => {
  /** An index of two tiers (2 and 2 slots) whose owners record every block that left, and from where. */
  function watched(): { ix: BlockIndex<string>; left: [string, number][] } {
    const left: [string, number][] = [];
    const owners: Owners<string> = {
      count: 1,
      of: () => 0,
      atQuota: () => false,
      victim: (tier, _o, _c, evictable) => ix.tiers[tier]!.policy.victim(evictable),
      left: (key, tier) => left.push([key, tier]),
    };
    const ix = new BlockIndex<string>(
      [2, 2].map((capacity, i) => ({ name: `t${i}`, capacity, policy: new LruPolicy<string>() })),
      { owners },
    );
    return { ix, left };
  }

  it('tells the tier of the last copy: a demotion is no leaving, a drop from the last tier is', () => {
    const { ix, left } = watched();
    for (const k of ['a', 'b', 'c', 'd']) put(ix, k); // a, b demoted to t1
    expect(left).toEqual([]);
    put(ix, 'e'); // c demoted to t1, whose LRU (a) is dropped: its last copy left from t1
    expect(left).toEqual([['a', 1]]);
    expect(ix.topTier('a')).toBe(ABSENT);
    consistent(ix);
  });

  it('tells remove() of every copy, once, with the lowest tier; a copy dropped above another, not at all', () => {
    const { ix, left } = watched();
    put(ix, 'a');
    put(ix, 'a', 1); // a copy in both tiers
    ix.remove('a', 0);
    expect(left).toEqual([]);
    expect(ix.topTier('a')).toBe(1);
    put(ix, 'a');
    ix.remove('a');
    expect(left).toEqual([['a', 1]]);
    put(ix, 'b');
    ix.remove('b', 0);
    expect(left).toEqual([
      ['a', 1],
      ['b', 0],
    ]);
    consistent(ix);
  });
});
