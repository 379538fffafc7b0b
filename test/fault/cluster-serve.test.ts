/**
 * Redis going away under running `kvtier serve` nodes: they keep serving from their own tiers,
 * say so in their log, and republish everything (what they stored meanwhile included) once
 * Redis is back, empty.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { connectCluster } from '../../lib/cluster/view.js';
import { connect } from '../../lib/peer/client.js';
import { chainKeys } from '../../lib/keys/keys.js';
import { tempDir, until } from '../helpers.js';
import {
  killAll,
  startServe,
  TOKEN,
  writeToken,
  type ServeProcess,
} from '../peer/serve-process.js';
import { haveRedisServer, startRedis, type RedisServer } from '../redis.js';

const haveRedis = haveRedisServer();
const BS = 16 << 10;

describe.runIf(haveRedis)('cluster faults: serve nodes while Redis is down', () => {
  let redis: RedisServer;
  let dir: { path: string; remove(): void };
  let node: ServeProcess | undefined;
  beforeAll(async () => {
    redis = await startRedis();
    dir = tempDir('kvtier-cluster-fault-');
  });
  afterAll(async () => {
    await node?.stop();
    killAll();
    await redis?.stop();
    dir?.remove();
  });

  it('keeps serving, logs degraded, and resynchronises when Redis returns', async () => {
    node = await startServe({
      blockBytes: BS,
      hostBytes: 64 * BS,
      tokenFile: writeToken(dir.path),
      extra: ['--redis', redis.url, '--node-id', 'steady', '--lease-ms', '900'],
    });
    await node.waitFor('cluster_joined');
    const keys = chainKeys(
      Array.from({ length: 10 * 8 }, (_, i) => i),
      { blockTokens: 8 },
    ).keys();
    const data = Buffer.alloc(10 * BS);
    for (let i = 0; i < 10; i++) data.fill(i + 1, i * BS, (i + 1) * BS);
    const c = await connect(`127.0.0.1:${node.port}`, { token: TOKEN, blockBytes: BS });
    try {
      expect((await c.put(keys.slice(0, 5), data.subarray(0, 5 * BS))).stored).toBe(5);
      await redis.halt();
      await until('the degraded log line', () =>
        node!.logs.some((l) => l.event === 'cluster' && String(l.message).includes('degraded')),
      );
      // Still a warehouse: puts and gets work.
      expect((await c.put(keys.slice(5), data.subarray(5 * BS))).stored).toBe(5);
      const dst = Buffer.alloc(10 * BS);
      expect((await c.get(keys, dst)).count).toBe(10);
      expect(dst.equals(data)).toBe(true);

      await redis.start();
      await until('the resync log line', () =>
        node!.logs.some(
          (l) => l.event === 'cluster' && String(l.message).includes('resynchronised'),
        ),
      );
      const view = await connectCluster(redis.url, { refreshMs: 0 });
      try {
        await until(
          'all ten blocks in the index',
          async () => (await view.rank(keys))[0]?.prefix === 10,
        );
        const status = await view.status();
        expect(status.nodes.map((n) => [n.id, n.resyncs])).toEqual([['steady', 1]]);
      } finally {
        await view.close();
      }
    } finally {
      await c.close();
    }
  });
});
