/**
 * Sessions, hints and request ids through the Warehouse (issue 16): checked (bad values are
 * KVTIER_BAD_ARGUMENT and change nothing), and passed into every AccessInfo a call builds, a
 * tenant's session ids scoped to the tenant. A recording policy (LRU underneath) shows what the
 * policy was told.
 */
import { describe, expect, it } from 'vitest';

import { isKvtierError, Warehouse, type AccessInfo } from '../../lib/index.js';
import { CallNumbers } from '../../lib/warehouse/calls.js';
import { LruPolicy } from '../../lib/policy/lru.js';
import { blocksFor } from '../blocks.js';

const BS = 64;

function keyOf(k: number): string {
  return k.toString(16).padStart(64, '0');
}

type Seen = { op: 'insert' | 'touch'; key: string } & AccessInfo;

async function recording(tenancy = false): Promise<{ wh: Warehouse; seen: Seen[] }> {
  const seen: Seen[] = [];
  const wh = await Warehouse.open({
    blockBytes: BS,
    tiers: [{ kind: 'host', bytes: 64 * BS }],
    policy: <K>() => {
      const lru = new LruPolicy<K>();
      return Object.assign(lru, {
        insert: (key: K, info: AccessInfo) => {
          seen.push({ op: 'insert', key: String(key), ...info });
          LruPolicy.prototype.insert.call(lru, key, info);
        },
        touch: (key: K, info: AccessInfo) => {
          seen.push({ op: 'touch', key: String(key), ...info });
          LruPolicy.prototype.touch.call(lru, key, info);
        },
      });
    },
    ...(tenancy
      ? {
          tenancy: {
            blockTokens: 16,
            secret: Buffer.alloc(32, 7),
            tenants: [{ name: 'a' }, { name: 'b' }],
          },
        }
      : {}),
  });
  return { wh, seen };
}

async function rejects(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    expect(isKvtierError(e, 'KVTIER_BAD_ARGUMENT'), String(e)).toBe(true);
    return (e as Error).message;
  }
  throw new Error('expected KVTIER_BAD_ARGUMENT');
}

describe('session, hint and request options', () => {
  it('reach every AccessInfo of the call: a request id joins a get and a put', async () => {
    const { wh, seen } = await recording();
    try {
      const keys = [1, 2, 3].map(keyOf);
      const src = blocksFor(keys, BS);
      await wh.put(keys.slice(0, 2), src, { session: 's1', hint: 'soon', request: 'r1' });
      await wh.get(keys, Buffer.alloc(3 * BS), { session: 's1', request: 'r2' });
      await wh.put(keys, src, { session: 's1', hint: 'closed', request: 'r2' });
      await wh.put(keys, src, { session: 's2' });
      await wh.put(keys, src);
      const [p1, p2, get, put, other, plain] = [
        seen.slice(0, 2),
        [],
        seen.slice(2, 4),
        seen.slice(4, 7),
        seen.slice(7, 10),
        seen.slice(10, 13),
      ];
      expect(p2).toEqual([]);
      expect(p1.map((s) => [s.op, s.depth, s.chainLength, s.hint])).toEqual([
        ['insert', 0, 2, 'soon'],
        ['insert', 1, 2, 'soon'],
      ]);
      // The get touches the two held blocks; the put of the same request touches them again
      // (written again) and inserts the third, all as one request of session s1.
      expect(get.map((s) => s.op)).toEqual(['touch', 'touch']);
      expect(put.map((s) => [s.op, s.depth, s.hint])).toEqual([
        ['touch', 0, 'closed'],
        ['touch', 1, 'closed'],
        ['insert', 2, 'closed'],
      ]);
      const request = get[0]!.request!;
      expect([...get, ...put].every((s) => s.request === request)).toBe(true);
      expect(p1[0]!.request).not.toBe(request);
      expect(new Set([...p1, ...get, ...put].map((s) => s.session))).toEqual(
        new Set([p1[0]!.session]),
      );
      // Another session, and none; each call without a request id is a request of its own.
      expect(other.every((s) => s.session !== p1[0]!.session && s.session !== undefined)).toBe(
        true,
      );
      expect(plain.every((s) => s.session === undefined && s.hint === undefined)).toBe(true);
      expect(new Set([other[0]!.request, plain[0]!.request, request]).size).toBe(3);
    } finally {
      await wh.close();
    }
  });

  it('bad values are KVTIER_BAD_ARGUMENT and leave the store as it was', async () => {
    const { wh, seen } = await recording();
    try {
      const keys = [1, 2].map(keyOf);
      const src = blocksFor(keys, BS);
      const dst = Buffer.alloc(2 * BS);
      const bad: unknown[] = [
        { hint: 'later' },
        { hint: 1 },
        { session: '' },
        { session: 'x'.repeat(257) },
        { session: 1.5 },
        { session: {} },
        { request: Number.NaN },
        { request: [] },
      ];
      for (const o of bad) {
        const msg = await rejects(() => wh.put(keys, src, o as object));
        expect(msg).toMatch(/options\.(hint|session|request)/);
        await rejects(() => wh.get(keys, dst, o as object));
        await rejects(() => wh.lookup(keys, o as object));
        await rejects(() => wh.prefetch(keys, o as object));
      }
      expect(seen).toEqual([]);
      expect(wh.keys()).toEqual([]);
      expect(wh.stats().gets).toBe(0);
      // Good values of every kind are taken.
      expect((await wh.put(keys, src, { session: 7, hint: 'closed', request: 0 })).stored).toBe(2);
      expect(wh.lookup(keys, { session: 'x'.repeat(256), hint: 'soon' }).prefix).toBe(2);
      expect((await wh.prefetch(keys, { session: 7, request: 'p' })).alreadyThere).toBe(2);
    } finally {
      await wh.close();
    }
  });

  it("scopes a session id to its tenant: two tenants' s1 are different sessions", async () => {
    const { wh, seen } = await recording(true);
    try {
      const keys = [1, 2].map(keyOf);
      const src = blocksFor(keys, BS);
      await wh.tenant('a').put(keys, src, { session: 's1' });
      await wh.tenant('b').put(keys, src, { session: 's1' });
      await wh.tenant('a').get(keys, Buffer.alloc(2 * BS), { session: 's1' });
      // One entry per call (the tenancy may tell more than one policy of a block).
      const calls = [...new Map(seen.map((x) => [x.request, x])).values()];
      expect(calls).toHaveLength(3);
      const [a1, b1, a2] = calls as [Seen, Seen, Seen];
      expect(a1.session).toBeDefined();
      expect(b1.session).not.toBe(a1.session);
      expect(a2.session).toBe(a1.session);
      // A tenant's caller is held to the caller's limits, whatever the view adds.
      await rejects(() => wh.tenant('a').put(keys, src, { session: 'x'.repeat(257) }));
      await rejects(() =>
        wh.tenant('a').get(keys, Buffer.alloc(2 * BS), { hint: 'never' as 'soon' }),
      );
      expect(new Set(seen.map((x) => x.request)).size).toBe(3);
    } finally {
      await wh.close();
    }
  });
});

describe('CallNumbers', () => {
  it('keeps at most `limit` session ids, drops the least recently used, never reuses a number', () => {
    const calls = new CallNumbers(3);
    const s = (id: string | number): number => calls.next({ session: id }).session!;
    const [a, b, c] = [s('a'), s('b'), s('c')];
    expect(new Set([a, b, c]).size).toBe(3);
    expect(s('a')).toBe(a); // a is now the most recent
    const d = s('d'); // drops b, the least recently used
    expect(calls.sessionCount).toBe(3);
    expect(s('a')).toBe(a);
    expect(s('c')).toBe(c);
    const b2 = s('b'); // forgotten: a new conversation, with a number never given before
    expect([a, b, c, d]).not.toContain(b2);
    // 1 and '1' are different ids.
    expect(s(1)).not.toBe(s('1'));
    // Requests: fresh per call unless named.
    const r1 = calls.next().request;
    expect(calls.next().request).not.toBe(r1);
    expect(calls.next({ request: 'x' }).request).toBe(calls.next({ request: 'x' }).request);
  });
});
