/**
 * The same index on a Redis Cluster of three masters: every script touches the keys of one
 * node's hash slot only, so nothing is refused as CROSSSLOT, and nodes spread over the shards.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ClusterNode } from '../../lib/cluster/node.js';
import { nodeKeys } from '../../lib/cluster/schema.js';
import { connectCluster } from '../../lib/cluster/view.js';
import { chainKeys } from '../../lib/keys/keys.js';
import { Warehouse } from '../../lib/warehouse/warehouse.js';
import { prerequisite } from '../helpers.js';
import {
  redisCliPath,
  redisServerPath,
  startRedisCluster,
  type RedisClusterServers,
} from '../redis.js';

const haveRedis = prerequisite(
  redisServerPath() !== undefined && redisCliPath() !== undefined,
  'redis-server and redis-cli are not installed (apt-get install redis-server)',
);
const BS = 4096;

describe.runIf(haveRedis)('cluster index on a three-master Redis Cluster', () => {
  let rc: RedisClusterServers;
  beforeAll(async () => {
    rc = await startRedisCluster(3);
  });
  afterAll(async () => {
    await rc?.stop();
  });

  it('publishes, ranks, lists and expires nodes spread over the shards', async () => {
    const keys = chainKeys(
      Array.from({ length: 64 * 4 }, (_, i) => i),
      { blockTokens: 4 },
    ).keys();
    const ids = ['shard-a', 'shard-b', 'shard-c', 'shard-d', 'shard-e', 'shard-f'];
    const ws = await Promise.all(
      ids.map(() => Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: 128 * BS }] })),
    );
    const nodes: ClusterNode[] = [];
    for (let i = 0; i < ids.length; i++) {
      nodes.push(
        await ClusterNode.join(ws[i]!, {
          redis: rc.url,
          nodeId: ids[i]!,
          advertise: `127.0.0.1:${7700 + i}`,
          leaseMs: 1500,
          log: () => {},
        }),
      );
    }
    const view = await connectCluster(rc.url, { refreshMs: 0 });
    try {
      expect(view.index.mode).toBe('cluster');
      // Node i holds the first 10*i + 3 blocks.
      await Promise.all(
        ws.map((w, i) => w.put(keys.slice(0, 10 * i + 3), Buffer.alloc((10 * i + 3) * BS, i))),
      );
      await Promise.all(nodes.map((n) => n.settled()));

      // The nodes' keys really live on more than one shard.
      const r = new Redis(rc.servers[0]!.port, '127.0.0.1');
      const shardsUsed = new Set<number>();
      try {
        const ranges = (await r.call('CLUSTER', 'SLOTS')) as [number, number, [string, number]][];
        for (const id of ids) {
          const slot = Number(await r.call('CLUSTER', 'KEYSLOT', nodeKeys(id).node));
          expect(Number(await r.call('CLUSTER', 'KEYSLOT', nodeKeys(id).blocks))).toBe(slot);
          const owner = ranges.find(([from, to]) => slot >= from && slot <= to);
          shardsUsed.add(owner![2][1]);
        }
      } finally {
        r.disconnect();
      }
      expect(shardsUsed.size).toBeGreaterThan(1);

      const ranked = await view.rank(keys);
      expect(ranked.map((n) => [n.id, n.prefix])).toEqual(
        ids.map((id, i) => [id, 10 * i + 3]).reverse(),
      );
      const status = await view.status();
      expect(status.mode).toBe('cluster');
      expect(status.nodes.map((n) => n.id)).toEqual(ids);

      // Evictions leave, and a dead node expires.
      await ws[5]!.evict(keys.slice(20));
      await nodes[5]!.settled();
      expect((await view.rank(keys, { nodes: ['shard-f'] }))[0]!.prefix).toBe(20);
      await nodes[4]!.close({ leave: false });
      for (let i = 0; i < 200; i++) {
        if (!(await view.status()).nodes.some((n) => n.id === 'shard-e')) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      expect((await view.status()).nodes.map((n) => n.id)).not.toContain('shard-e');
      expect((await view.rank(keys)).map((n) => [n.id, n.prefix])).toEqual([
        ['shard-d', 33],
        ['shard-c', 23],
        ['shard-f', 20],
        ['shard-b', 13],
        ['shard-a', 3],
      ]);
    } finally {
      await view.close();
      await Promise.all(nodes.map((n) => n.close()));
      await Promise.all(ws.map((w) => w.close()));
    }
  });
});
