/**
 * Redis going away under a node: the warehouse keeps serving from its own tiers and reports
 * 'degraded'; when Redis comes back (empty: it kept nothing) the node republishes everything,
 * including what it stored meanwhile.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ClusterNode } from '../../lib/cluster/node.js';
import { connectCluster } from '../../lib/cluster/view.js';
import { chainKeys, type Key } from '../../lib/keys/keys.js';
import { Warehouse } from '../../lib/warehouse/warehouse.js';
import { until } from '../helpers.js';
import { haveRedisServer, startRedis, type RedisServer } from '../redis.js';

const haveRedis = haveRedisServer();
const BS = 4096;

function chain(n: number, seed: number): Key[] {
  return chainKeys(
    Array.from({ length: n * 4 }, (_, i) => i + seed * 100_000),
    { blockTokens: 4 },
  ).keys();
}

describe.runIf(haveRedis)('cluster faults: Redis down and back', () => {
  let redis: RedisServer;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await redis?.stop();
  });

  it('keeps serving while Redis is down, reports degraded, and resynchronises when it returns', async () => {
    const keys = chain(12, 1);
    const w = await Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: 64 * BS }] });
    const logs: string[] = [];
    const node = await ClusterNode.join(w, {
      redis: redis.url,
      nodeId: 'survivor',
      advertise: '127.0.0.1:7600',
      leaseMs: 900,
      log: (m) => logs.push(m),
    });
    try {
      const src = Buffer.alloc(12 * BS);
      for (let i = 0; i < 12; i++) src.fill(i + 1, i * BS, (i + 1) * BS);
      await w.put(keys.slice(0, 6), src);
      await node.settled();

      await redis.halt();
      await until('the node to notice', () => w.stats().cluster?.degraded === true);
      expect(w.stats().cluster).toMatchObject({ state: 'degraded', degraded: true });

      // The warehouse does not care: puts, gets, lookups and evictions all work.
      await w.put(keys.slice(6, 12), src.subarray(6 * BS));
      const dst = Buffer.alloc(12 * BS);
      const got = await w.get(keys, dst);
      expect(got.count).toBe(12);
      expect(dst.equals(src)).toBe(true);
      expect(w.lookup(keys).prefix).toBe(12);
      expect((await w.evict(keys.slice(11))).removed).toBe(1);

      await redis.start(); // empty: no persistence
      await until('the resync', () => w.stats().cluster?.state === 'ok');
      expect(node.stats().resyncs).toBe(1);
      expect(logs.some((m) => m.includes('degraded'))).toBe(true);
      const view = await connectCluster(redis.url, { refreshMs: 0 });
      try {
        // Everything it holds, including what it stored while Redis was away; not the evicted one.
        const ranked = await view.rank(keys, { nodes: ['survivor'] });
        expect(ranked.map((n) => [n.id, n.prefix])).toEqual([['survivor', 11]]);
        // New changes flow again.
        await w.put(keys.slice(11), src.subarray(11 * BS));
        await node.settled();
        expect((await view.rank(keys))[0]!.prefix).toBe(12);
        const status = await view.status();
        expect(status.nodes.find((n) => n.id === 'survivor')).toBeDefined();
      } finally {
        await view.close();
      }
    } finally {
      await node.close();
      await w.close();
    }
  });

  it('republishes when its lease vanished under it (Redis flushed or restarted unnoticed)', async () => {
    const keys = chain(5, 2);
    const w = await Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: 16 * BS }] });
    const node = await ClusterNode.join(w, {
      redis: redis.url,
      nodeId: 'flushed',
      advertise: '127.0.0.1:7601',
      leaseMs: 600,
      log: () => {},
    });
    const view = await connectCluster(redis.url, { refreshMs: 0 });
    try {
      await w.put(keys, Buffer.alloc(5 * BS, 9));
      await node.settled();
      const raw = new Redis(redis.port, '127.0.0.1');
      await raw.flushall();
      raw.disconnect();
      expect(await view.rank(keys)).toEqual([]);
      // The next renewal finds no lease, claims it again and republishes.
      await until('the republish', async () => (await view.rank(keys))[0]?.prefix === 5);
      expect(node.stats()).toMatchObject({ state: 'ok', resyncs: 1 });
    } finally {
      await view.close();
      await node.close();
      await w.close();
    }
  });
});
