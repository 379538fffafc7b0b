/** The routing example runs: it starts Redis and three serve nodes, and routes by cluster.rank. */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { haveRedisServer } from '../redis.js';

const haveRedis = haveRedisServer();
const example = fileURLToPath(new URL('../../examples/cache-aware-router.mjs', import.meta.url));

interface Result {
  policy: string;
  requests: number;
  blocks: number;
  localHitRate: number;
  clusterHitRate: number;
  routed: Record<string, number>;
}

describe.runIf(haveRedis)('examples/cache-aware-router.mjs', () => {
  it('routes to the engine holding the prompt, which round robin does not', () => {
    const r = spawnSync(process.execPath, [example, '--requests', '30', '--json'], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(r.status, r.stderr).toBe(0);
    const { engines, results } = JSON.parse(r.stdout) as { engines: number; results: Result[] };
    expect(engines).toBe(3);
    const [aware, rr] = results as [Result, Result];
    expect(aware.policy).toBe('cache-aware');
    expect(rr.policy).toBe('round-robin');
    expect(aware.blocks).toBe(rr.blocks);
    // Every request went to some engine, and the warehouse served at least what engines held.
    for (const x of results) {
      expect(Object.values(x.routed).reduce((a, b) => a + b, 0)).toBe(30);
      expect(x.clusterHitRate).toBeGreaterThanOrEqual(x.localHitRate);
    }
    // Routing by cached prefix keeps prompts where their blocks are.
    expect(aware.localHitRate).toBeGreaterThan(rr.localHitRate);
    // Round robin's misses are filled from peers through the cluster.
    expect(rr.clusterHitRate).toBeGreaterThan(rr.localHitRate);
  });
});
