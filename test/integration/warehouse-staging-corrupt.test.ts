// A staging or prefetch copy that fails verification after it landed in a slot reused from a
// victim must not give the victim that slot back (its bytes are gone): the victim keeps the copy
// written down for it, and the damaged source is dropped and counted corrupt. Real file tier, real
// bytes, an injected clock; staging ticks are waited for, never slept for.
import { afterAll, describe, expect, it } from 'vitest';

import {
  chainKeys,
  Warehouse,
  type PredictivePrefetchStats,
  type WarehouseOptions,
} from '../../lib/index.js';
import type { EvictionPolicy } from '../../lib/policy/policy.js';
import { ReturnTimePolicy } from '../../lib/policy/return-time.js';
import { randomBytes, tempDir, until } from '../helpers.js';
import { closeSync, openSync, readdirSync, readFileSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';

const BS = 16 * 1024;
const dirs: { remove(): void }[] = [];
afterAll(() => dirs.forEach((d) => d.remove()));

function chain(n: number, namespace: string): string[] {
  const tokens = Uint32Array.from({ length: n * 4 }, (_, i) => i);
  return chainKeys(tokens, { blockTokens: 4, namespace }).keys();
}

/**
 * return-time whose curves say: a first turn (class 0) comes back within 1 s or never; a
 * conversation in its second quick turn (class 2) comes back after about 30 s. `made` collects
 * the instances, in tier order.
 */
function taught(made: ReturnTimePolicy<string>[]) {
  return <K>(capacity: number): EvictionPolicy<K> => {
    const p = new ReturnTimePolicy<K>(capacity);
    for (let i = 0; i < 300; i++) {
      p.model.returned(0, 1000);
      p.model.censored(0, 3_600_000);
      p.model.returned(2, 30_000);
    }
    p.model.rebuild();
    made.push(p as unknown as ReturnTimePolicy<string>);
    return p;
  };
}

interface Setup {
  w: Warehouse;
  dir: string;
  clock: { t: number };
  policies: ReturnTimePolicy<string>[];
  data: Map<string, Buffer>;
}

async function open(
  prefetch: { bytesPerSecond: number; intervalMs?: number },
  extra: Partial<WarehouseOptions> = {},
): Promise<Setup> {
  const d = tempDir('kvtier-whs-');
  dirs.push(d);
  const clock = { t: 0 };
  const policies: ReturnTimePolicy<string>[] = [];
  const w = await Warehouse.open({
    blockBytes: BS,
    tiers: [
      { kind: 'host', bytes: 4 * BS },
      { kind: 'file', dir: d.path, bytes: 32 * BS },
    ],
    policy: taught(policies),
    now: () => clock.t,
    predictivePrefetch: { intervalMs: 2, ...prefetch },
    ...extra,
  });
  return { w, dir: d.path, clock, policies, data: new Map() };
}

/** One request of a conversation: a get of its chain (hits and misses), then a put of it all. */
async function turn(s: Setup, keys: string[], request: string): Promise<void> {
  const dst = Buffer.alloc(keys.length * BS);
  await s.w.get(keys, dst, { request });
  const src = Buffer.alloc(keys.length * BS);
  keys.forEach((k, i) => {
    let b = s.data.get(k);
    if (!b) s.data.set(k, (b = randomBytes(BS)));
    b.copy(src, i * BS);
  });
  await s.w.put(keys, src, { request });
}

const S = chain(4, 's');
const X = chain(4, 'x');

/**
 * S: two quick turns (1 s, then 3 s: class 2, back in about 30 s); X at 4 s: a first turn, worth
 * more than S for its first second (it may come back within 1 s), which fills host memory and
 * pushes S down to the file tier, deepest block first.
 */
async function conversations(s: Setup): Promise<void> {
  s.clock.t = 1000;
  await turn(s, S.slice(0, 2), 's1');
  s.clock.t = 3000;
  await turn(s, S, 's2');
  s.clock.t = 4000;
  await turn(s, X, 'x1');
  expect(S.map(where(s))).toEqual([1, 1, 1, 1]);
}

function where(s: Setup): (key: string) => number {
  return (key) => s.w.lookup([key]).tiers[0]!;
}

function staging(s: Setup): PredictivePrefetchStats {
  return s.w.stats().predictivePrefetch!;
}

/** staged = read + evicted unread + staged again further up + still staged, in every tier. */
function reconciles(p: PredictivePrefetchStats): void {
  for (const t of p.tiers) {
    expect(t.staged, t.name).toBe(t.read + t.evictedUnread + t.restaged + t.resident);
  }
}

/** Waits for `n` more ticks of the staging timer (each a forecast on the current state). */
async function ticks(s: Setup, n: number): Promise<void> {
  const from = staging(s).ticks;
  await until(`${n} staging ticks`, () => staging(s).ticks >= from + n);
}

/** Flips one byte of each of these blocks' copies in the file tier's files. */
function corrupt(s: Setup, keys: string[]): void {
  const files: string[] = [];
  const walk = (d: string): void => {
    for (const f of readdirSync(d)) {
      const q = join(d, f);
      if (statSync(q).isDirectory()) walk(q);
      else files.push(q);
    }
  };
  walk(s.dir);
  let n = 0;
  for (const f of files) {
    const buf = readFileSync(f);
    for (const k of keys) {
      const at = buf.indexOf(s.data.get(k)!);
      if (at < 0) continue;
      const fd = openSync(f, 'r+');
      writeSync(fd, Buffer.from([buf[at + 100]! ^ 0xff]), 0, 1, at + 100);
      closeSync(fd);
      n++;
    }
  }
  expect(n).toBe(keys.length);
}

async function xIntact(s: Setup): Promise<boolean[]> {
  const dst = Buffer.alloc(4 * BS);
  const g = await s.w.get(X, dst);
  return X.map((k, i) => g.found[i]! && dst.subarray(i * BS, (i + 1) * BS).equals(s.data.get(k)!));
}

describe('a copy that fails verification into a reused victim slot', () => {
  it('staging a block whose file copy is corrupt keeps the host victim it displaced', async () => {
    const s = await open({ bytesPerSecond: 1e9 });
    await conversations(s); // host: X (no other copy); file: S
    corrupt(s, [S[1]!, S[3]!]);
    s.clock.t = 10_000; // S due: staging copies S up, displacing X blocks
    await ticks(s, 20);
    const p = staging(s);
    // The two damaged sources were tried, failed, dropped and counted corrupt; others staged.
    expect(p.failed).toBe(2);
    expect(s.w.stats().corrupt).toBe(2);
    expect(s.w.lookup([S[1]!, S[3]!]).tiers).toEqual([-1, -1]);
    expect(p.tiers[0]!.staged).toBeGreaterThan(0);
    reconciles(p);
    expect(await xIntact(s)).toEqual([true, true, true, true]);
    await s.w.close();
  });

  it('control: the same without staging keeps every X block', async () => {
    const s = await open({ bytesPerSecond: 1e9 }, { predictivePrefetch: undefined });
    await conversations(s);
    corrupt(s, [S[1]!, S[3]!]);
    s.clock.t = 10_000;
    expect(await xIntact(s)).toEqual([true, true, true, true]);
    await s.w.close();
  });

  it('an explicit prefetch() of a corrupt file block into full host memory keeps the victim', async () => {
    const s = await open({ bytesPerSecond: 1e9 }, { predictivePrefetch: undefined });
    await conversations(s);
    corrupt(s, [S[1]!]);
    s.clock.t = 10_000;
    const r = await s.w.prefetch([S[1]!], { to: 0 });
    expect(r.moved).toBe(0);
    expect(s.w.stats().corrupt).toBe(1);
    expect(s.w.lookup([S[1]!]).tiers).toEqual([-1]);
    expect(await xIntact(s)).toEqual([true, true, true, true]);
    await s.w.close();
  });
});
