// Shared set-up of the predictive-prefetch (staging) tests: a warehouse with a host tier of 4
// blocks over a real file tier, return-time policies taught fixed return curves, an injected
// clock, and two conversations S and X whose turns push S down to the file tier.
import { expect } from 'vitest';

import {
  chainKeys,
  Warehouse,
  type PredictivePrefetchStats,
  type WarehouseOptions,
} from '../../lib/index.js';
import type { EvictionPolicy } from '../../lib/policy/policy.js';
import { ReturnTimePolicy } from '../../lib/policy/return-time.js';
import { randomBytes, tempDir, until } from '../helpers.js';

export const BS = 16 * 1024;
/** Temporary directories made by open() (and by tests that open warehouses of their own). */
export const dirs: { remove(): void }[] = [];

/** Removes the directories open() made (call it from the test file's afterAll). */
export function removeDirs(): void {
  dirs.splice(0).forEach((d) => d.remove());
}

export function chain(n: number, namespace: string): string[] {
  const tokens = Uint32Array.from({ length: n * 4 }, (_, i) => i);
  return chainKeys(tokens, { blockTokens: 4, namespace }).keys();
}

/**
 * return-time whose curves say: a first turn (class 0) comes back within 1 s or never; a
 * conversation in its second quick turn (class 2) comes back after about 30 s. `made` collects
 * the instances, in tier order.
 */
export function taught(made: ReturnTimePolicy<string>[]) {
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

export interface Setup {
  w: Warehouse;
  dir: string;
  clock: { t: number };
  policies: ReturnTimePolicy<string>[];
  data: Map<string, Buffer>;
}

export async function open(
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
export async function turn(s: Setup, keys: string[], request: string): Promise<void> {
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

export const S = chain(4, 's');
export const X = chain(4, 'x');

/**
 * S: two quick turns (1 s, then 3 s: class 2, back in about 30 s); X at 4 s: a first turn, worth
 * more than S for its first second (it may come back within 1 s), which fills host memory and
 * pushes S down to the file tier, deepest block first.
 */
export async function conversations(s: Setup): Promise<void> {
  s.clock.t = 1000;
  await turn(s, S.slice(0, 2), 's1');
  s.clock.t = 3000;
  await turn(s, S, 's2');
  s.clock.t = 4000;
  await turn(s, X, 'x1');
  expect(S.map(where(s))).toEqual([1, 1, 1, 1]);
}

export function where(s: Setup): (key: string) => number {
  return (key) => s.w.lookup([key]).tiers[0]!;
}

export function staging(s: Setup): PredictivePrefetchStats {
  return s.w.stats().predictivePrefetch!;
}

/** staged = read + evicted unread + staged again further up + still staged, in every tier. */
export function reconciles(p: PredictivePrefetchStats): void {
  for (const t of p.tiers) {
    expect(t.staged, t.name).toBe(t.read + t.evictedUnread + t.restaged + t.resident);
  }
}

/** Waits for `n` more ticks of the staging timer (each a forecast on the current state). */
export async function ticks(s: Setup, n: number): Promise<void> {
  const from = staging(s).ticks;
  await until(`${n} staging ticks`, () => staging(s).ticks >= from + n);
}
