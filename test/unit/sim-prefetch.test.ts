import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it, onTestFinished } from 'vitest';

import { openTrace } from '../../lib/apps/sim/open.js';
import { SimPrefetcher } from '../../lib/apps/sim/prefetch.js';
import { simulate, type SimOptions } from '../../lib/apps/sim/replay.js';
import { simulateTimed, type TimedOptions } from '../../lib/apps/sim/timed.js';
import { KvtierError } from '../../lib/core/errors.js';
import { tempDir } from '../helpers.js';

/**
 * Agent-like sessions taking turns: session s sends a request every `period` ms (offset by s
 * seconds), each one its whole chain so far plus one new block (keys s * 1000 + i). The GPU tier
 * holds about one session, host memory all of them: every return reads its chain from host
 * memory unless it was staged up in time.
 */
function writeTrace(sessions = 6, turns = 30, period = 20_000): string {
  const dir = tempDir('kvtier-prefetch-');
  onTestFinished(() => dir.remove());
  const file = join(dir.path, 'agents.jsonl');
  const lines: object[] = [{ kvtier: 'trace', version: 1, blockTokens: 4 }];
  for (let turn = 0; turn < turns; turn++) {
    for (let s = 0; s < sessions; s++) {
      const keys = Array.from({ length: 4 + turn }, (_, i) => s * 1000 + i);
      lines.push({ t: turn * period + s * 1000, keys, in: keys.length * 4 });
    }
  }
  writeFileSync(file, lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
  return file;
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
    console.log(JSON.stringify(p), plain.tiers.map((t) => t.hits.prefix), r.tiers.map((t) => t.hits.prefix));
    expect(p.staged).toBeGreaterThan(0);
    expect(p.stagedHits).toBeGreaterThan(0);
    expect(p.staged).toBe(p.read + p.wasted + p.resident);
    expect(p.stagedFrom).toEqual([0, p.staged]);
    expect(p.stagedHitsByTier).toEqual([p.stagedHits, 0]);
    expect(p.read).toBeGreaterThanOrEqual(p.stagedHits);
    // Every access is a hit or a miss, with or without prefetch; staging only moves blocks up.
    expect(r.hitRate.prefix).toBeCloseTo(plain.hitRate.prefix, 12);
    expect(r.tiers[0]!.hits.prefix).toBeGreaterThan(plain.tiers[0]!.hits.prefix);
    expect(r.tiers[0]!.promotions).toBeGreaterThanOrEqual(p.staged);
    expect(plain.prefetch).toBeUndefined();
  });
});
