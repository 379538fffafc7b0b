/**
 * The global block index against a real redis-server: publishing, eviction, chain lookups,
 * ranking, leases, node-id collisions, foreign formats, bad URLs and passwords, `cluster status`.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ClusterNode } from '../../lib/cluster/node.js';
import { RedisIndex } from '../../lib/cluster/redis-index.js';
import { parseRedisUrl } from '../../lib/cluster/redis-connect.js';
import { nodeKeys, REGISTRY_KEY } from '../../lib/cluster/schema.js';
import { connectCluster, type ClusterView } from '../../lib/cluster/view.js';
import { isKvtierError, type ErrorCode } from '../../lib/core/errors.js';
import { chainKeys, type Key } from '../../lib/keys/keys.js';
import { Warehouse } from '../../lib/warehouse/warehouse.js';
import { freePort, haveRedisServer, startRedis, type RedisServer } from '../redis.js';

const haveRedis = haveRedisServer();
const cli = fileURLToPath(new URL('../../dist/apps/cli/main.js', import.meta.url));
const BS = 4096;

async function rejectsWith(p: Promise<unknown>, code: ErrorCode): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(isKvtierError(e, code), String(e)).toBe(true);
    return (e as Error).message;
  }
  throw new Error(`expected ${code}, nothing was thrown`);
}

function chain(n: number, seed = 0): Key[] {
  return chainKeys(
    Array.from({ length: n * 4 }, (_, i) => i + seed * 100_000),
    { blockTokens: 4 },
  ).keys();
}

async function open(blocks = 64): Promise<Warehouse> {
  return Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: blocks * BS }] });
}

describe('cluster URLs', () => {
  it('refuses malformed Redis URLs with KVTIER_BAD_ARGUMENT', () => {
    for (const url of [
      '',
      'localhost:6379',
      'http://localhost:6379',
      'redis://',
      'redis://host:99999',
      'redis://host:6379/x',
      'redis://host:6379/0?db=1',
    ]) {
      let code: string | undefined;
      try {
        parseRedisUrl(url);
      } catch (e) {
        code = (e as { code?: string }).code;
      }
      expect(code, url).toBe('KVTIER_BAD_ARGUMENT');
    }
    expect(parseRedisUrl('redis://:s%40cret@127.0.0.1:7000/2')).toMatchObject({
      host: '127.0.0.1',
      port: 7000,
      db: 2,
      password: 's@cret',
      tls: false,
      display: 'redis://127.0.0.1:7000/2',
    });
  });
});

describe.runIf(haveRedis)('cluster index on a real redis-server', () => {
  let redis: RedisServer;
  let raw: Redis;
  let view: ClusterView;
  const logs: string[] = [];

  beforeAll(async () => {
    redis = await startRedis();
    raw = new Redis(redis.port, '127.0.0.1');
    view = await connectCluster(redis.url, { refreshMs: 0, log: (m) => logs.push(m) });
  });
  afterAll(async () => {
    await view?.close();
    raw?.disconnect();
    await redis?.stop();
  });

  it('publishes puts, ranks nodes by cached prefix, and removes evicted blocks', async () => {
    const keys = chain(40, 1);
    const a = await open(8);
    const b = await open(64);
    const na = await ClusterNode.join(a, {
      redis: redis.url,
      nodeId: 'rank-a',
      advertise: '127.0.0.1:7101',
    });
    const nb = await ClusterNode.join(b, {
      redis: redis.url,
      nodeId: 'rank-b',
      advertise: '127.0.0.1:7102',
    });
    try {
      await a.put(keys.slice(0, 6), Buffer.alloc(6 * BS, 1));
      await b.put(keys.slice(0, 10), Buffer.alloc(10 * BS, 2));
      await Promise.all([na.settled(), nb.settled()]);

      const ranked = await view.rank(keys, { nodes: ['rank-a', 'rank-b'] });
      expect(ranked.map((n) => [n.id, n.prefix])).toEqual([
        ['rank-b', 10],
        ['rank-a', 6],
      ]);
      expect(ranked[0]!.address).toBe('127.0.0.1:7102');

      // Node a's host tier holds 8 blocks: 6 more evict its oldest ones from the warehouse,
      // and the index follows.
      await a.put(keys.slice(20, 26), Buffer.alloc(6 * BS, 3));
      await na.settled();
      const members = await raw.smembers(nodeKeys('rank-a').blocks);
      expect(members.length).toBe(a.stats().blocks);
      expect(members.length).toBe(8);
      const held = new Set(a.keys());
      const published = new Set(
        (await raw.smembersBuffer(nodeKeys('rank-a').blocks)).map((m) => m.toString('hex')),
      );
      expect(published).toEqual(held);
      const after = await view.rank(keys.slice(0, 6), { nodes: ['rank-a'] });
      expect(after[0]!.prefix).toBeLessThan(6);

      // Explicit evict() leaves the index too.
      expect((await b.evict(keys.slice(5, 10))).removed).toBe(5);
      await nb.settled();
      expect((await view.rank(keys, { nodes: ['rank-b'] }))[0]!.prefix).toBe(5);
      expect(na.stats()).toMatchObject({ state: 'ok', degraded: false });
      expect(a.stats().cluster).toMatchObject({ nodeId: 'rank-a', state: 'ok', degraded: false });
    } finally {
      await Promise.all([na.close(), nb.close()]);
      await Promise.all([a.close(), b.close()]);
    }
    // close() leaves: the entries are gone at once, not after the lease.
    expect(await raw.exists(nodeKeys('rank-a').node, nodeKeys('rank-a').blocks)).toBe(0);
    expect(await raw.sismember(REGISTRY_KEY, 'rank-a')).toBe(0);
  });

  it('breaks ties by load: the router’s own figures first, then what nodes report', async () => {
    const keys = chain(8, 2);
    const ws = [await open(), await open(), await open()];
    const nodes = await Promise.all(
      ws.map((w, i) =>
        ClusterNode.join(w, {
          redis: redis.url,
          nodeId: `tie-${i}`,
          advertise: `127.0.0.1:${7200 + i}`,
        }),
      ),
    );
    try {
      await ws[0]!.put(keys.slice(0, 4), Buffer.alloc(4 * BS));
      await ws[1]!.put(keys.slice(0, 4), Buffer.alloc(4 * BS));
      await ws[2]!.put(keys.slice(0, 2), Buffer.alloc(2 * BS));
      await Promise.all(nodes.map((n) => n.settled()));
      const ids = ['tie-0', 'tie-1', 'tie-2'];
      const byLoad = await view.rank(keys, { nodes: ids, load: { 'tie-0': 5, 'tie-1': 1 } });
      expect(byLoad.map((n) => n.id)).toEqual(['tie-1', 'tie-0', 'tie-2']);
      const other = await view.rank(keys, { nodes: ids, load: { 'tie-0': 0, 'tie-1': 3 } });
      expect(other.map((n) => n.id)).toEqual(['tie-0', 'tie-1', 'tie-2']);
      expect(other.map((n) => n.prefix)).toEqual([4, 4, 2]);
      // Restricting to a subset, and a chain nobody holds: every node, prefix 0.
      const none = await view.rank(chain(3, 99), { nodes: ['tie-2', 'tie-0'] });
      expect(none.map((n) => [n.id, n.prefix])).toEqual([
        ['tie-0', 0],
        ['tie-2', 0],
      ]);
    } finally {
      await Promise.all(nodes.map((n) => n.close()));
      await Promise.all(ws.map((w) => w.close()));
    }
  });

  it('publishes what a warehouse already held when it joins, in chunks', async () => {
    const keys = chain(3000, 3);
    const w = await Warehouse.open({ blockBytes: 64, tiers: [{ kind: 'host', bytes: 4000 * 64 }] });
    await w.put(keys, Buffer.alloc(keys.length * 64, 7));
    const n = await ClusterNode.join(w, {
      redis: redis.url,
      nodeId: 'bulk',
      advertise: 'node-x:7300',
    });
    try {
      expect(await raw.scard(nodeKeys('bulk').blocks)).toBe(3000);
      expect((await view.rank(keys, { nodes: ['bulk'] }))[0]!.prefix).toBe(3000);
    } finally {
      await n.close();
      await w.close();
    }
  });

  it('refuses a node id that is live at another address (KVTIER_CONFLICT), and takes over at the same address', async () => {
    const a = await open();
    const b = await open();
    const notes: string[] = [];
    const na = await ClusterNode.join(a, {
      redis: redis.url,
      nodeId: 'dup',
      advertise: '127.0.0.1:7401',
      log: (m) => notes.push(m),
    });
    try {
      await a.put(chain(2, 4), Buffer.alloc(2 * BS));
      await na.settled();
      const msg = await rejectsWith(
        ClusterNode.join(b, { redis: redis.url, nodeId: 'dup', advertise: '127.0.0.1:7402' }),
        'KVTIER_CONFLICT',
      );
      expect(msg).toContain('127.0.0.1:7401');
      // The refused join changed nothing: a still holds the id and its entries.
      expect(await raw.hget(nodeKeys('dup').node, 'address')).toBe('127.0.0.1:7401');
      expect(await raw.scard(nodeKeys('dup').blocks)).toBe(2);
      expect(b.stats().cluster).toBeUndefined();

      // A restart at the same address (the old process crashed, its lease still live) takes
      // over: the old entries are replaced by what the new process holds.
      const nb = await ClusterNode.join(b, {
        redis: redis.url,
        nodeId: 'dup',
        advertise: '127.0.0.1:7401',
      });
      expect(await raw.scard(nodeKeys('dup').blocks)).toBe(0);
      // The displaced instance notices on its next write and stops publishing.
      await a.put(chain(3, 5), Buffer.alloc(3 * BS));
      await na.settled();
      expect(await raw.scard(nodeKeys('dup').blocks)).toBe(0);
      expect(na.stats()).toMatchObject({ state: 'conflict', degraded: true });
      expect(notes.some((m) => m.includes('stops publishing'))).toBe(true);
      expect(nb.stats().state).toBe('ok');
      await nb.close();
    } finally {
      await na.close();
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('refuses bad node ids, addresses and leases with KVTIER_BAD_ARGUMENT', async () => {
    const w = await open();
    try {
      for (const [nodeId, advertise, leaseMs] of [
        ['has space', '127.0.0.1:1', 1000],
        ['{tag}', '127.0.0.1:1', 1000],
        ['', '127.0.0.1:1', 1000],
        ['ok', '127.0.0.1', 1000],
        ['ok', '127.0.0.1:0', 1000],
        ['ok', 'host:70000', 1000],
        ['ok', '127.0.0.1:1', 10],
        ['ok', '127.0.0.1:1', 1.5],
      ] as const) {
        await rejectsWith(
          ClusterNode.join(w, { redis: redis.url, nodeId, advertise, leaseMs }),
          'KVTIER_BAD_ARGUMENT',
        );
      }
      await rejectsWith(
        ClusterNode.join(w, { redis: 'redis//nope', nodeId: 'x', advertise: 'h:1' }),
        'KVTIER_BAD_ARGUMENT',
      );
      expect(w.stats().cluster).toBeUndefined();
    } finally {
      await w.close();
    }
  });

  it('looks a chain up in one script: prefixes stop at the first hole, any chain length', async () => {
    const idx = await RedisIndex.open(redis.url);
    const keys = chain(700, 8);
    try {
      await idx.claim('holes', 'i1', 60_000, {
        address: 'h:1',
        capacityBytes: 0,
        usedBytes: 0,
        blocks: 0,
        load: 0,
        resyncs: 0,
      });
      // Holds 0..299 and 301..699: the prefix ends at the hole.
      expect(
        await idx.publish('holes', 'i1', 60_000, [...keys.slice(0, 300), ...keys.slice(301)], []),
      ).toBe('ok');
      expect([...(await idx.lookup(keys, ['holes']))]).toEqual([['holes', 300]]);
      expect([...(await idx.lookup(keys.slice(301), ['holes']))]).toEqual([['holes', 399]]);
      expect([...(await idx.lookup(keys.slice(300, 301), ['holes']))]).toEqual([['holes', 0]]);
      // 16-byte keys (an engine's own hashes) next to 32-byte ones.
      const short = ['00112233445566778899aabbccddeeff', 'ffeeddccbbaa99887766554433221100'];
      expect(await idx.publish('holes', 'i1', 60_000, short, [])).toBe('ok');
      expect([...(await idx.lookup([...short, keys[0]!], ['holes']))]).toEqual([['holes', 3]]);
      // An unknown node and an empty chain.
      expect([...(await idx.lookup(keys, ['no-such-node']))]).toEqual([]);
      // Another instance may not write into this node's set.
      expect(await idx.publish('holes', 'intruder', 60_000, [], keys.slice(0, 10))).toBe(
        'conflict',
      );
      expect([...(await idx.lookup(keys, ['holes']))]).toEqual([['holes', 300]]);
      await idx.leave('holes', 'i1');
      expect(await idx.publish('holes', 'i1', 60_000, keys.slice(0, 1), [])).toBe('lost');
    } finally {
      await idx.close();
    }
  });

  it('ignores and logs nodes that publish another index format', async () => {
    const keys = chain(4, 6);
    const own = await open();
    const n = await ClusterNode.join(own, {
      redis: redis.url,
      nodeId: 'fmt-own',
      advertise: 'h:1',
    });
    // A node of a future kvtier: same registry, another format, a block set under its name.
    const foreign = nodeKeys('fmt-future', '9');
    await raw.hset(nodeKeys('fmt-future').node, {
      instance: 'x',
      address: 'h:2',
      format: '9',
      leaseMs: '60000',
    });
    await raw.pexpire(nodeKeys('fmt-future').node, 60_000);
    await raw.sadd(foreign.blocks, ...keys.map((k) => Buffer.from(k, 'hex')));
    // Even one that wrote its set where format 1 would: the format field decides.
    await raw.sadd(nodeKeys('fmt-future').blocks, ...keys.map((k) => Buffer.from(k, 'hex')));
    await raw.sadd(REGISTRY_KEY, 'fmt-future');
    try {
      const status = await view.status();
      const f = status.nodes.find((x) => x.id === 'fmt-future');
      expect(f).toMatchObject({ compatible: false, format: '9' });
      expect(logs.some((m) => m.includes('fmt-future') && m.includes('ignored'))).toBe(true);
      const ranked = await view.rank(keys);
      expect(ranked.map((x) => x.id)).not.toContain('fmt-future');
      // Asked directly, the index leaves it out too.
      const idx = await RedisIndex.open(redis.url, { log: (m) => logs.push(m) });
      expect([...(await idx.lookup(keys, ['fmt-future', 'fmt-own'])).entries()]).toEqual([
        ['fmt-own', 0],
      ]);
      await idx.close();
    } finally {
      await raw.del(nodeKeys('fmt-future').node, nodeKeys('fmt-future').blocks, foreign.blocks);
      await raw.srem(REGISTRY_KEY, 'fmt-future');
      await n.close();
      await own.close();
    }
  });

  it('lets a dead node’s entries expire with its lease', async () => {
    const keys = chain(4, 7);
    const w = await open();
    const n = await ClusterNode.join(w, {
      redis: redis.url,
      nodeId: 'mortal',
      advertise: 'h:9',
      leaseMs: 600,
    });
    await w.put(keys, Buffer.alloc(4 * BS));
    await n.settled();
    expect((await view.rank(keys, { nodes: ['mortal'] }))[0]!.prefix).toBe(4);
    // Stops renewing without leaving, as a crash would.
    await n.close({ leave: false });
    await w.close();
    for (let i = 0; i < 100 && (await raw.exists(nodeKeys('mortal').node)) === 1; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(await raw.exists(nodeKeys('mortal').node, nodeKeys('mortal').blocks)).toBe(0);
    expect((await view.status()).nodes.map((x) => x.id)).not.toContain('mortal');
    expect(await view.rank(keys, { nodes: ['mortal'] })).toEqual([]);
    // The registry dropped the id on the way.
    expect(await raw.sismember(REGISTRY_KEY, 'mortal')).toBe(0);
  });

  it('shows a node that missed its renewals as degraded in cluster status', async () => {
    // A lease of 60 s renewed 50 s ago: past two thirds, so that node cannot reach Redis.
    const k = nodeKeys('silent');
    await raw.hset(k.node, {
      instance: 'x',
      address: 'h:7',
      format: '1',
      leaseMs: '60000',
      capacityBytes: '1024',
      usedBytes: '512',
    });
    await raw.pexpire(k.node, 10_000);
    await raw.sadd(REGISTRY_KEY, 'silent');
    try {
      const me = (await view.status()).nodes.find((n) => n.id === 'silent');
      expect(me).toMatchObject({ state: 'degraded', capacityBytes: 1024, usedBytes: 512 });
      expect(me!.leaseAgeMs).toBeGreaterThanOrEqual(50_000);
      const text = spawnSync(process.execPath, [cli, 'cluster', 'status', '--redis', redis.url], {
        encoding: 'utf8',
      });
      expect(text.stdout).toMatch(/silent .*degraded/);
    } finally {
      await raw.del(k.node);
      await raw.srem(REGISTRY_KEY, 'silent');
    }
  });

  it('kvtier cluster status lists nodes with capacity, fill and lease age', async () => {
    const w = await open(16);
    const n = await ClusterNode.join(w, {
      redis: redis.url,
      nodeId: 'cli-node',
      advertise: '127.0.0.1:7500',
    });
    try {
      const r = spawnSync(
        process.execPath,
        [cli, 'cluster', 'status', '--redis', redis.url, '--json'],
        {
          encoding: 'utf8',
        },
      );
      expect(r.status, r.stderr).toBe(0);
      const status = JSON.parse(r.stdout) as {
        nodes: {
          id: string;
          address: string;
          capacityBytes: number;
          usedBytes: number;
          leaseAgeMs: number;
        }[];
      };
      const me = status.nodes.find((x) => x.id === 'cli-node');
      expect(me).toMatchObject({ address: '127.0.0.1:7500', capacityBytes: 16 * BS, usedBytes: 0 });
      expect(me!.leaseAgeMs).toBeGreaterThanOrEqual(0);
      const text = spawnSync(process.execPath, [cli, 'cluster', 'status', '--redis', redis.url], {
        encoding: 'utf8',
      });
      expect(text.status).toBe(0);
      expect(text.stdout).toContain('cli-node');
      expect(text.stdout).toContain('127.0.0.1:7500');
    } finally {
      await n.close();
      await w.close();
    }
  });

  it('kvtier cluster status fails with a code on a bad URL and on an unreachable Redis', async () => {
    const bad = spawnSync(process.execPath, [cli, 'cluster', 'status', '--redis', 'nope'], {
      encoding: 'utf8',
    });
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toContain('KVTIER_BAD_ARGUMENT');
    const port = await freePort();
    const down = spawnSync(
      process.execPath,
      [cli, 'cluster', 'status', '--redis', `redis://127.0.0.1:${port}`],
      { encoding: 'utf8' },
    );
    expect(down.status).not.toBe(0);
    expect(down.stderr).toContain('KVTIER_REDIS');
  });
});

describe.runIf(haveRedis)('cluster index with Redis AUTH', () => {
  let redis: RedisServer;
  beforeAll(async () => {
    redis = await startRedis({ password: 'right-one' });
  });
  afterAll(async () => {
    await redis?.stop();
  });

  it('fails a wrong or missing password with KVTIER_AUTH and works with the right one', async () => {
    const base = `127.0.0.1:${redis.port}`;
    await rejectsWith(RedisIndex.open(`redis://:wrong@${base}`), 'KVTIER_AUTH');
    await rejectsWith(RedisIndex.open(`redis://${base}`), 'KVTIER_AUTH');
    await rejectsWith(RedisIndex.open(`redis://someone:right-one@${base}`), 'KVTIER_AUTH');
    const w = await open();
    const n = await ClusterNode.join(w, {
      redis: `redis://:right-one@${base}`,
      nodeId: 'authed',
      advertise: 'h:1',
    });
    try {
      expect(n.stats().state).toBe('ok');
      const v = await connectCluster(redis.url);
      expect((await v.status()).nodes.map((x) => x.id)).toEqual(['authed']);
      expect((await v.status()).redis).not.toContain('right-one');
      await v.close();
    } finally {
      await n.close();
      await w.close();
    }
  });
});
