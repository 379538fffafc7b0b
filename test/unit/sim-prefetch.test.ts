import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it, onTestFinished, vi } from 'vitest';

import { openTrace } from '../../lib/apps/sim/open.js';
import { SimPrefetcher } from '../../lib/apps/sim/prefetch.js';
import { simulate, type SimOptions } from '../../lib/apps/sim/replay.js';
import { simulateTimed, type TimedOptions } from '../../lib/apps/sim/timed.js';
import { KvtierError } from '../../lib/core/errors.js';
import { policyByName } from '../../lib/policy/index.js';
import type { AccessInfo, EvictionPolicy } from '../../lib/policy/policy.js';
import { ReturnTimePolicy } from '../../lib/policy/return-time.js';
import { BlockIndex } from '../../lib/warehouse/block-index.js';
import { tempDir } from '../helpers.js';

/**
 * Agent-like sessions taking turns: session s sends a request every `period` ms (offset by s
 * seconds), each one its whole chain so far plus one new block (keys s * 1000 + i). The GPU tier
 * holds about one session, host memory all of them: every return reads its chain from host
 * memory unless it was staged up in time.
 */
function writeTrace(sessions = 6, turns = 30, period = 20_000, stopAt = turns): string {
  const dir = tempDir('kvtier-prefetch-');
  onTestFinished(() => dir.remove());
  const file = join(dir.path, 'agents.jsonl');
  const lines: object[] = [{ kvtier: 'trace', version: 1, blockTokens: 4 }];
  for (let turn = 0; turn < turns; turn++) {
    for (let s = 0; s < sessions; s++) {
      // Past `stopAt`, the first half of the sessions never come back.
      if (turn >= stopAt && s < sessions / 2) continue;
      const keys = Array.from({ length: 4 + turn }, (_, i) => s * 1000 + i);
      lines.push({ t: turn * period + s * 1000, keys, in: keys.length * 4 });
    }
  }
  writeFileSync(file, lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
  return file;
}

/**
 * A top-tier return-time policy whose curves say: a first turn (class 0) never comes back; a
 * second quick turn (class 2) comes back within 2 s.
 */
function trainedTop(): ReturnTimePolicy<number> {
  const top = new ReturnTimePolicy<number>(3);
  for (let i = 0; i < 300; i++) {
    top.model.censored(0, 3_600_000);
    top.model.returned(2, 2000);
  }
  top.model.rebuild();
  return top;
}

/** Sends requests to `index` as the replay does: stage, read (prefix), place in the top tier. */
function sender(
  pf: SimPrefetcher,
  index: BlockIndex<number>,
): (now: number, keys: number[]) => void {
  let request = 0;
  return (now, keys) => {
    pf.before(now, index);
    request++;
    const info = (depth: number): AccessInfo => ({
      now,
      priority: 0,
      depth,
      chainLength: keys.length,
      request,
    });
    keys.forEach((k, i) => pf.read(k, index.access(k, info(i)), true));
    keys.forEach((k, i) => index.place(k, 0, info(i), { length: 0, checksum: 0 }));
  };
}

const tiers = [
  { name: 'gpu', capacity: 40 },
  { name: 'host', capacity: 10_000 },
];

describe('sim: predictive prefetch', () => {
  it('stages forecast blocks, and staged = read + evicted unread + still staged', async () => {
    const trace = await openTrace(writeTrace());
    const base: SimOptions = { tiers, policy: 'return-time' };
    const plain = await simulate(trace, base);
    const r = await simulate(trace, { ...base, prefetch: { blocksPerMs: [0, 0.01] } });
    const p = r.prefetch!;
    expect(p.staged).toBeGreaterThan(0);
    expect(p.stagedHits).toBeGreaterThan(0);
    expect(p.staged).toBe(p.read + p.wasted + p.resident + p.restaged);
    expect(p.stagedFrom).toEqual([0, p.staged]);
    expect(p.stagedHitsByTier).toEqual([p.stagedHits, 0]);
    expect(p.read).toBeGreaterThanOrEqual(p.stagedHits);
    // Every access is a hit or a miss, with or without prefetch; staging only moves blocks up.
    expect(r.hitRate.prefix).toBeCloseTo(plain.hitRate.prefix, 12);
    expect(r.tiers[0]!.hits.prefix).toBeGreaterThan(plain.tiers[0]!.hits.prefix);
    expect(r.tiers[0]!.promotions).toBeGreaterThanOrEqual(p.staged);
    expect(plain.prefetch).toBeUndefined();
  });

  it('counts staged blocks evicted unread, and those still staged at the end', async () => {
    // A budget far beyond what the next request reads, and half the sessions stop coming back
    // while the model still expects them: staging outruns the reads.
    const trace = await openTrace(writeTrace(8, 24, 30_000, 12));
    const r = await simulate(trace, {
      tiers: [
        { name: 'gpu', capacity: 20 },
        { name: 'host', capacity: 10_000 },
      ],
      policy: 'return-time',
      prefetch: { blocksPerMs: [0, 1] },
    });
    const p = r.prefetch!;
    expect(p.staged).toBe(p.read + p.wasted + p.resident + p.restaged);
    expect(p.read).toBeGreaterThan(0);
    expect(p.wasted + p.resident).toBeGreaterThan(0);
  });

  it('through three tiers: file to host memory, host memory to the GPU, reconciled', async () => {
    const trace = await openTrace(writeTrace(8, 30));
    const r = await simulate(trace, {
      tiers: [
        { name: 'gpu', capacity: 40 },
        { name: 'host', capacity: 80 },
        { name: 'file', capacity: 10_000 },
      ],
      policy: 'return-time',
      prefetch: { blocksPerMs: [0, 1, 0.05] },
    });
    const p = r.prefetch!;
    expect(p.stagedFrom[1]).toBeGreaterThan(0);
    expect(p.stagedFrom[2]).toBeGreaterThan(0);
    expect(p.stagedFrom[0]! + p.stagedFrom[1]! + p.stagedFrom[2]!).toBe(p.staged);
    expect(p.staged).toBe(p.read + p.wasted + p.resident + p.restaged);
    expect(p.restaged).toBeGreaterThan(0);
    expect(p.stagedHitsByTier.reduce((a, b) => a + b, 0)).toBe(p.stagedHits);
  });

  it('prices staged hits as free in --timed and reports the share staged', async () => {
    const trace = await openTrace(writeTrace());
    const o: TimedOptions = {
      tiers,
      rates: [
        { gbps: 1, latencyMs: 0 },
        { gbps: 1, latencyMs: 0.1 },
      ],
      policy: 'return-time',
      blockTokens: 4,
      bytesPerToken: 1e5,
      prefillTokensPerSecond: 1000,
    };
    const r = await simulateTimed(trace, { ...o, prefetch: { share: 0.5 } });
    const p = r.prefetch!;
    expect(p.stagedHits).toBeGreaterThan(0);
    expect(p.shareStaged).toBeCloseTo(p.stagedHits / (p.stagedHits + p.lowerHits), 12);
    expect(p.shareStaged).toBeGreaterThan(0);
    // Staged hits load nothing at request time: the mean TTFT falls.
    expect(r.ttft.warehouse.mean).toBeLessThan(p.without.ttft.mean);
    expect(p.topHits.without).toBeGreaterThan(0);
    const plain = await simulateTimed(trace, o);
    expect(plain.prefetch).toBeUndefined();
    expect(plain.ttft.warehouse).toEqual(p.without.ttft);
    await expect(simulateTimed(trace, { ...o, prefetch: { share: 1.5 } })).rejects.toThrow(
      KvtierError,
    );
  });

  it('three tiers in --timed: the share staged leaves blocks staged into host memory out of the lower-tier hits', async () => {
    const trace = await openTrace(writeTrace(8, 30));
    const three = [
      { name: 'gpu', capacity: 40 },
      { name: 'host', capacity: 80 },
      { name: 'file', capacity: 10_000 },
    ];
    const rates = [
      { gbps: 1, latencyMs: 0 },
      { gbps: 1, latencyMs: 0.01 },
      { gbps: 0.05, latencyMs: 0.1 },
    ];
    const blockTokens = 4;
    const bytesPerToken = 1e5;
    const share = 0.4;
    const r = await simulateTimed(trace, {
      tiers: three,
      rates,
      policy: 'return-time',
      blockTokens,
      bytesPerToken,
      prefillTokensPerSecond: 1000,
      prefetch: { share },
    });
    const p = r.prefetch!;
    // Lower-tier prefix hits counted from what the timed model loaded: each one block's bytes
    // (every request's input is its whole chain here).
    const blockBytes = blockTokens * bytesPerToken;
    const lowerAll = (r.loadedBytes[1]! + r.loadedBytes[2]!) / blockBytes;
    // The same replay untimed, at the budget --timed derives (share of each tier's bandwidth).
    const plain = await simulate(trace, {
      tiers: three,
      policy: 'return-time',
      blockTokens,
      prefetch: {
        blocksPerMs: rates.map((t, i) => (i === 0 ? 0 : (share * t.gbps * 1e6) / blockBytes)),
      },
    });
    expect(plain.tiers[1]!.hits.prefix + plain.tiers[2]!.hits.prefix).toBe(lowerAll);
    expect(plain.prefetch!.stagedHitsByTier).toEqual(p.stagedHitsByTier);
    // Blocks staged into host memory and read there are lower-tier hits and staged hits at once.
    const intoHost = p.stagedHitsByTier[1]!;
    expect(intoHost).toBeGreaterThan(0);
    expect(p.stagedHitsByTier[0]).toBeGreaterThan(0);
    expect(p.stagedHitsByTier[2]).toBe(0); // nothing is staged into the bottom tier
    // Numerator: staged prefix hits in any tier. Denominator: every prefix hit a lower tier
    // served or would have served without staging (those staged up to the top tier included).
    expect(p.lowerHits).toBe(lowerAll - intoHost);
    expect(p.stagedHits + p.lowerHits).toBe(lowerAll + p.stagedHitsByTier[0]!);
    expect(p.shareStaged).toBeCloseTo(p.stagedHits / (lowerAll + p.stagedHitsByTier[0]!), 12);
    expect(p.shareStaged).toBeGreaterThan(0);
    expect(p.shareStaged).toBeLessThan(1);
  });

  it('rejects bad budgets and a policy that cannot forecast', async () => {
    expect(() => new SimPrefetcher({ blocksPerMs: [0, -1] })).toThrow(KvtierError);
    expect(() => new SimPrefetcher({ blocksPerMs: [0, NaN] })).toThrow(KvtierError);
    expect(() => new SimPrefetcher({ blocksPerMs: [0, 1], burst: 0 })).toThrow(KvtierError);
    const trace = await openTrace(writeTrace(2, 2));
    await expect(
      simulate(trace, { tiers, policy: 'lru', prefetch: { blocksPerMs: [0, 1] } }),
    ).rejects.toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
  });

  it("a block staged into a lower tier reaches that tier's policy through stage(), not insert()", () => {
    const pf = new SimPrefetcher({ blocksPerMs: [0, 0, 1] });
    const top = trainedTop();
    // Host memory's policy: LRU, recording what it is told.
    const lru = policyByName<number>('lru', 3);
    const calls: string[] = [];
    const host: EvictionPolicy<number> = {
      name: 'recording',
      get size() {
        return lru.size;
      },
      insert(key, info) {
        calls.push(`insert ${key}`);
        lru.insert(key, info);
      },
      touch: (key, info) => lru.touch(key, info),
      remove: (key) => lru.remove(key),
      victim: (evictable) => lru.victim(evictable),
      stage(key, now) {
        calls.push(`stage ${key}`);
        lru.insert(key, { now, priority: 0, depth: 0, chainLength: 1 });
        return true;
      },
    };
    const index = new BlockIndex<number>([
      { name: 'gpu', capacity: 3, policy: pf.wrap(top, 0) },
      { name: 'host', capacity: 3, policy: pf.wrap(host, 1) },
      { name: 'file', capacity: 100, policy: pf.wrap(policyByName<number>('lru', 100), 2) },
    ]);
    const send = sender(pf, index);
    send(0, [100, 101, 102]); // G: a first turn, gone
    send(1000, [1, 2]); // S, turn 1
    send(3000, [1, 2, 3]); // S, turn 2 (class 2, back within 2 s)
    send(4000, [200, 201, 202]); // first turns: blocks go down to host memory and the file tier
    send(5000, [300, 301, 302]);
    const keys = [100, 101, 102, 1, 2, 3, 200, 201, 202, 300, 301, 302];
    calls.length = 0;
    const earlier = pf.result.staged;
    // Only the file tier has a budget: whatever is staged moves from the file tier to host memory.
    pf.before(6000, index);
    const n = pf.result.staged - earlier;
    expect(n).toBeGreaterThan(0);
    expect(pf.result.stagedFrom).toEqual([0, 0, pf.result.staged]);
    // Host memory's policy heard of each as a staged block (one it may have let go of), never as
    // a request's insertion (a staged block may displace another: counted as wasted).
    expect(calls).toHaveLength(n);
    expect(calls.filter((c) => !c.startsWith('stage '))).toEqual([]);
    expect(keys.filter((k) => index.topTier(k) === 1).length).toBeGreaterThan(0);
  });

  it('a block staged into the top tier rejoins its group there through stage(), not insert()', () => {
    const pf = new SimPrefetcher({ blocksPerMs: [0, 1] });
    const top = trainedTop();
    const index = new BlockIndex<number>([
      { name: 'gpu', capacity: 3, policy: pf.wrap(top, 0) },
      { name: 'host', capacity: 100, policy: pf.wrap(policyByName<number>('lru', 100), 1) },
    ]);
    const send = sender(pf, index);
    send(0, [100, 101, 102]);
    send(1000, [1, 2]);
    send(3000, [1, 2, 3]);
    send(4000, [200, 201, 202]);
    send(5000, [300, 301, 302]);
    const stage = vi.spyOn(top, 'stage');
    const insert = vi.spyOn(top, 'insert');
    const earlier = pf.result.stagedFrom[1]!;
    pf.before(6000, index);
    const n = pf.result.stagedFrom[1]! - earlier;
    expect(n).toBeGreaterThan(0);
    expect(stage).toHaveBeenCalledTimes(n);
    expect(stage.mock.results.every((r) => r.value === true)).toBe(true);
    expect(insert).not.toHaveBeenCalled();
  });

  it('never stages a block worth less than the victim it would displace', () => {
    const pf = new SimPrefetcher({ blocksPerMs: [0, 1] });
    // Curves: a first turn (class 0) never comes back; a second quick turn (class 2) comes back
    // within 2 s.
    const top = trainedTop();
    const index = new BlockIndex<number>([
      { name: 'gpu', capacity: 3, policy: pf.wrap(top, 0) },
      { name: 'host', capacity: 100, policy: pf.wrap(policyByName<number>('lru', 100), 1) },
    ]);
    const send = sender(pf, index);
    send(0, [100, 101, 102]); // G: a first turn, gone
    send(1000, [1, 2]); // S, turn 1
    send(3000, [1, 2, 3]); // S, turn 2 (class 2): G is pushed down to host memory
    expect([100, 101, 102].map((k) => index.topTier(k))).toEqual([1, 1, 1]);
    // 10 s later G is forecast, but S (back soon) is worth more: nothing is staged.
    send(13_000, [1, 2, 3]);
    expect(top.forecast(13_000, 10)).toContain(100);
    expect(pf.result.refused).toBeGreaterThan(0);
    expect(pf.result.staged).toBe(0);
    expect([100, 101, 102].map((k) => index.topTier(k))).toEqual([1, 1, 1]);
  });
});
