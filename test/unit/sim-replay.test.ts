import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it, onTestFinished } from 'vitest';

import { openTrace } from '../../lib/apps/sim/open.js';
import { scanTrace, simulate } from '../../lib/apps/sim/replay.js';
import { tempDir } from '../helpers.js';

const fixture = fileURLToPath(
  new URL('../fixtures/traces/conversation-head400.jsonl', import.meta.url),
);

/** An independent LRU replay: a Map's insertion order as the recency list, nothing shared. */
function referenceLru(
  requests: number[][],
  capacity: number,
): { prefix: number; any: number; accesses: number } {
  const cache = new Map<number, true>();
  let prefix = 0;
  let any = 0;
  let accesses = 0;
  for (const keys of requests) {
    let inPrefix = true;
    for (const k of keys) {
      accesses++;
      if (cache.has(k)) {
        any++;
        if (inPrefix) prefix++;
        cache.delete(k);
        cache.set(k, true);
      } else {
        inPrefix = false;
      }
    }
    for (const k of keys) {
      if (cache.has(k)) {
        cache.delete(k);
      } else if (cache.size >= capacity) {
        cache.delete(cache.keys().next().value!);
      }
      cache.set(k, true);
    }
  }
  return { prefix, any, accesses };
}

/** Belady by brute force: evict the resident key used farthest ahead (bypass if the new one is). */
function referenceBelady(requests: number[][], capacity: number): number {
  const flat = requests.flat();
  const nextUse = (k: number, from: number): number => {
    for (let i = from; i < flat.length; i++) if (flat[i] === k) return i;
    return Infinity;
  };
  const cache = new Set<number>();
  let any = 0;
  let pos = 0;
  for (const keys of requests) {
    const start = pos;
    for (const k of keys) if (cache.has(k)) any++;
    keys.forEach((k, i) => {
      if (cache.has(k)) return;
      const mine = nextUse(k, start + keys.length);
      if (cache.size < capacity) {
        cache.add(k);
        return;
      }
      let worst = -1;
      let victim = -1;
      for (const c of cache) {
        const n = nextUse(
          c,
          start + i + 1 > start + keys.length ? start + i + 1 : start + keys.length,
        );
        if (n > worst) {
          worst = n;
          victim = c;
        }
      }
      if (mine < worst) {
        cache.delete(victim);
        cache.add(k);
      }
    });
    pos += keys.length;
  }
  return any;
}

async function fixtureRequests(): Promise<number[][]> {
  const trace = await openTrace(fixture);
  const out: number[][] = [];
  for await (const r of trace.requests()) out.push(Array.from(r.keys).slice(0, r.length));
  return out;
}

describe('sim replay', () => {
  it('reads the fixture as Mooncake and counts it', async () => {
    const trace = await openTrace(fixture);
    expect(trace.format).toBe('mooncake');
    const s = await scanTrace(trace);
    const reqs = await fixtureRequests();
    expect(s.requests).toBe(400);
    expect(s.accesses).toBe(reqs.reduce((a, r) => a + r.length, 0));
    expect(s.distinct).toBe(new Set(reqs.flat()).size);
  });

  for (const capacity of [1, 17, 100, 500, 2000]) {
    it(`LRU at ${capacity} blocks matches an independent replay exactly`, async () => {
      const reqs = await fixtureRequests();
      const want = referenceLru(reqs, capacity);
      const got = await simulate(await openTrace(fixture), {
        tiers: [{ name: 'cache', capacity }],
        policy: 'lru',
      });
      expect(got.accesses).toBe(want.accesses);
      expect(got.tiers[0]!.hits.prefix).toBe(want.prefix);
      expect(got.tiers[0]!.hits.any).toBe(want.any);
      expect(got.hitRate.prefix).toBeCloseTo(want.prefix / want.accesses, 12);
    });
  }

  it('Belady matches a brute-force optimum on any-block hits and bounds LRU', async () => {
    const reqs = (await fixtureRequests()).slice(0, 120);
    const dir = tempDir('kvtier-sim-');
    onTestFinished(() => dir.remove());
    const file = join(dir.path, 'small.jsonl');
    writeFileSync(
      file,
      reqs.map((k, i) => JSON.stringify({ timestamp: i, hash_ids: k })).join('\n') + '\n',
    );
    for (const capacity of [5, 50, 200]) {
      const b = await simulate(await openTrace(file), {
        tiers: [{ name: 'cache', capacity }],
        policy: 'belady',
      });
      const l = await simulate(await openTrace(file), {
        tiers: [{ name: 'cache', capacity }],
        policy: 'lru',
      });
      expect(b.tiers[0]!.hits.any).toBe(referenceBelady(reqs, capacity));
      expect(b.hitRate.any).toBeGreaterThanOrEqual(l.hitRate.any);
    }
  });

  it('accounts a hierarchy: demotions down, promotions up, hits split by tier', async () => {
    const r = await simulate(await openTrace(fixture), {
      tiers: [
        { name: 'gpu', capacity: 50 },
        { name: 'host', capacity: 300 },
        { name: 'file', capacity: 3000 },
      ],
      policy: 'lru',
      blockBytes: 1000,
    });
    const sum = r.tiers.reduce((a, t) => a + t.hitRate.any, 0);
    expect(sum).toBeCloseTo(r.hitRate.any, 12);
    expect(r.tiers[1]!.demotions).toBeGreaterThan(0);
    expect(r.tiers[0]!.promotions).toBeGreaterThan(0);
    expect(r.tiers[1]!.bytesDemoted).toBe(r.tiers[1]!.demotions * 1000);
    // More capacity below can only help a write-back LRU hierarchy here.
    const single = await simulate(await openTrace(fixture), {
      tiers: [{ name: 'gpu', capacity: 50 }],
      policy: 'lru',
    });
    expect(r.hitRate.any).toBeGreaterThan(single.hitRate.any);
  });
});
