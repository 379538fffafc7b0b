/** `kvtier cluster bench` on a real redis-server, tiny: the report's shape and its cleanup. */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runClusterBench } from '../../lib/apps/bench/cluster-bench.js';
import { haveRedisServer, startRedis, type RedisServer } from '../redis.js';

const haveRedis = haveRedisServer();

describe.runIf(haveRedis)('kvtier cluster bench', () => {
  let redis: RedisServer;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await redis?.stop();
  });

  it('measures both clients on the same data, checks they agree, and leaves nothing behind', async () => {
    const report = await runClusterBench({
      redis: redis.url,
      nodes: 3,
      chainKeys: 40,
      chains: 4,
      seconds: 0.2,
      publishKeys: 500,
      inFlight: 2,
    });
    expect(report.prefixes).toEqual([40, 27, 13]);
    expect(report.lookups.map((l) => [l.client, l.inFlight])).toEqual([
      ['kvtier', 1],
      ['naive', 1],
      ['kvtier', 2],
      ['naive', 2],
    ]);
    for (const l of report.lookups) expect(l.lookups).toBeGreaterThan(0);
    expect(report.lookups[0]!.commandsPerLookup).toBe(1);
    expect(report.lookups[1]!.commandsPerLookup).toBe(40);
    expect(report.publish.keys).toBe(500);
    expect(report.publish.kvtierKeysPerSec).toBeGreaterThan(0);
    expect(report.mode).toBe('standalone');
    const raw = new Redis(redis.port, '127.0.0.1');
    try {
      expect(await raw.dbsize()).toBe(0);
    } finally {
      raw.disconnect();
    }
  });

  it('refuses bad options with KVTIER_BAD_ARGUMENT', async () => {
    await expect(
      runClusterBench({
        redis: redis.url,
        nodes: 0,
        chainKeys: 4,
        chains: 1,
        seconds: 1,
        publishKeys: 1,
        inFlight: 1,
      }),
    ).rejects.toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
  });
});
