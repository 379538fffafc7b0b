import { describe, expect, it } from 'vitest';

import { LruPolicy } from '../../lib/policy/lru.js';
import type { AccessInfo } from '../../lib/policy/policy.js';
import { ABSENT, BlockIndex, type Plan } from '../../lib/warehouse/block-index.js';
import { TenantOwners } from '../../lib/warehouse/tenant-quotas.js';

const info = (now = 0): AccessInfo => ({ now, priority: 0, depth: 0, chainLength: 1 });
const meta = { length: 1, checksum: 1 };
const TAGS = ['', 'aaaaaaaa', 'bbbbbbbb', 'cccccccc'];
let serial = 0;
/** A key of owner o (0: a key no tenant's tag starts). */
const keyOf = (o: number): string =>
  (o === 0 ? 'ffffffff' : TAGS[o]!) + (serial++).toString(16).padStart(24, '0');

/** Owners 1 (quota 4 of tier 0), 2 (share 0.5 of tier 0, 2 blocks of tier 1), 3 (pinned, none). */
function setup(): { ix: BlockIndex<string>; owners: TenantOwners } {
  const owners = new TenantOwners(
    [
      { tag: TAGS[1]!, quota: { t0: { bytes: 4 } }, pinned: false },
      { tag: TAGS[2]!, quota: { t0: { share: 0.5 }, t1: { bytes: 2 } }, pinned: false },
      { tag: TAGS[3]!, quota: undefined, pinned: true },
    ],
    1,
  );
  const tiers = [
    { name: 't0', slots: 8 },
    { name: 't1', slots: 8 },
  ];
  owners.bind(tiers);
  const lru = <K>(): LruPolicy<K> => new LruPolicy<K>();
  const ix = new BlockIndex<string>(
    tiers.map((t, i) => ({
      name: t.name,
      capacity: t.slots,
      policy: owners.policy(i, lru, t.slots),
    })),
    { owners },
  );
  owners.attach(ix);
  return { ix, owners };
}

/** Usage per owner and tier equals the copies each owner's keys hold (plus claimed slots, owner 0). */
function reconciled(ix: BlockIndex<string>, owners: TenantOwners, claimed = 0): void {
  for (let t = 0; t < ix.tiers.length; t++) {
    const held = [0, 0, 0, 0];
    for (const [key, e] of ix) if (e.slots[t] !== ABSENT) held[owners.of(key)]!++;
    held[0]! += t === 0 ? claimed : 0;
    expect(
      [0, 1, 2, 3].map((o) => ix.usage(o, t)),
      `tier ${t}`,
    ).toEqual(held);
    expect(held.reduce((a, b) => a + b, 0)).toBe(ix.tiers[t]!.used);
  }
}

function put(ix: BlockIndex<string>, key: string): boolean {
  const plan = ix.plan(key, 0, info());
  if (!plan) return false;
  ix.commit(plan, info(), meta);
  return true;
}

describe('tenant quotas in the BlockIndex', () => {
  it('makes an owner at its quota give up its own blocks, even with slots free', () => {
    const { ix, owners } = setup();
    const a = Array.from({ length: 6 }, () => keyOf(1));
    for (const k of a) expect(put(ix, k)).toBe(true);
    // Quota 4: the last two took the places of a[0] and a[1] (demoted to t1, which has room).
    expect(ix.usage(1, 0)).toBe(4);
    expect(ix.tiers[0]!.used).toBe(4);
    expect(a.map((k) => ix.topTier(k))).toEqual([1, 1, 0, 0, 0, 0]);
    reconciled(ix, owners);
  });

  it("never takes a quota'd or pinned owner's block for another's, and refuses an owner whose own blocks are held", () => {
    const { ix, owners } = setup();
    const b = Array.from({ length: 4 }, () => keyOf(2));
    const p = Array.from({ length: 2 }, () => keyOf(3));
    const n = Array.from({ length: 2 }, () => keyOf(0));
    for (const k of [...b, ...p, ...n]) expect(put(ix, k)).toBe(true);
    // Full. Owner 1 (under its quota) may take only the operator's blocks.
    const a1 = keyOf(1);
    const plan = ix.plan(a1, 0, info())!;
    expect(plan.moves.map((m) => owners.of(m.key))).toEqual([0]);
    ix.commit(plan, info(), meta);
    expect(put(ix, keyOf(1))).toBe(true);
    // Now only b's (at quota, protected), p's (pinned) and a's own blocks are in t0: a's next
    // put, under its quota of 4 with 2 held, can only take its own.
    const a3 = ix.plan(keyOf(1), 0, info())!;
    expect(a3.moves.map((m) => owners.of(m.key))).toEqual([1]);
    ix.abort(a3);
    reconciled(ix, owners);
    // The operator (owner 0) may take none of them.
    expect(ix.plan(keyOf(0), 0, info())).toBeUndefined();
    // b at its quota, every block of it pinned: refused, and recorded as a quota refusal.
    for (const k of b) ix.pin(k);
    const b5 = keyOf(2);
    expect(ix.plan(b5, 0, info())).toBeUndefined();
    expect(owners.refused.has(b5)).toBe(true);
    for (const k of p) expect(ix.topTier(k)).toBe(0);
    reconciled(ix, owners);
  });

  it('keeps usage exact through commits, aborts, removals, demotions, claims and adoptions', () => {
    const { ix, owners } = setup();
    let seed = 42;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return (seed >>> 16) % n; // the low bits of this generator repeat with a short period
    };
    const keys: string[] = [];
    const claims: number[] = [];
    for (let step = 0; step < 3000; step++) {
      const op = rand(10);
      if (op < 5) {
        const k = keyOf(rand(4));
        const plan: Plan<string> | undefined = ix.plan(k, rand(2), info(step));
        if (plan && rand(4) === 0) ix.abort(plan);
        else if (plan) {
          ix.commit(plan, info(step), meta);
          keys.push(k);
        }
      } else if (op < 7 && keys.length > 0) {
        ix.remove(keys[rand(keys.length)]!, rand(3) === 0 ? rand(2) : undefined);
      } else if (op < 8 && keys.length > 0) {
        ix.access(keys[rand(keys.length)]!, info(step));
      } else if (op < 9) {
        const plan = ix.plan(`landing ${step}`, 0, info(step));
        if (plan) claims.push(ix.claim(plan, info(step)));
      } else if (claims.length > 0) {
        const slot = claims.pop()!;
        // Adopted by the operator or the unquota'd owner 3, or given back.
        if (rand(2) === 0) ix.unclaim(0, slot);
        else {
          const k = keyOf(rand(2) === 0 ? 0 : 3);
          ix.adopt(k, 0, slot, info(step), meta);
          keys.push(k);
        }
      }
      reconciled(ix, owners, claims.length);
      expect(ix.usage(1, 0)).toBeLessThanOrEqual(4);
      expect(ix.usage(2, 0)).toBeLessThanOrEqual(4);
      expect(ix.usage(2, 1)).toBeLessThanOrEqual(2);
    }
  });
});
