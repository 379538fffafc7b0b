/**
 * Opening Redis: one URL for a standalone server and for Redis Cluster alike (the server says
 * which it is), with errors that carry kvtier codes. Nothing here knows the index's key layout.
 */
import { Cluster, Redis, type RedisOptions } from 'ioredis';

import { KvtierError } from '../core/errors.js';

export type RedisClient = Redis | Cluster;
export type RedisMode = 'standalone' | 'cluster';

export interface RedisTarget {
  host: string;
  port: number;
  username?: string;
  password?: string;
  db: number;
  tls: boolean;
  /** The URL without its password, for messages and logs. */
  display: string;
}

/** Parses redis://[user[:password]@]host[:port][/db] and rediss://; anything else is refused. */
export function parseRedisUrl(url: string): RedisTarget {
  if (typeof url !== 'string' || url.length === 0) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'a Redis URL is needed, e.g. redis://host:6379');
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch (e) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `not a URL: ${JSON.stringify(url)}`, {
      cause: e,
    });
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `a Redis URL starts with redis:// or rediss://, got ${JSON.stringify(u.protocol)}`,
    );
  }
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  if (host.length === 0) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `the Redis URL ${JSON.stringify(url)} has no host`,
    );
  }
  const port = u.port === '' ? 6379 : Number(u.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `bad port in Redis URL ${JSON.stringify(url)}`);
  }
  const path = u.pathname.replace(/^\//, '');
  const db = path === '' ? 0 : Number(path);
  if (!/^\d*$/.test(path) || !Number.isInteger(db) || db < 0) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `the path of a Redis URL is a database number, got ${JSON.stringify(u.pathname)}`,
    );
  }
  if (u.search !== '' || u.hash !== '') {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `a Redis URL takes no query or fragment: ${JSON.stringify(url)}`,
    );
  }
  const target: RedisTarget = {
    host,
    port,
    db,
    tls: u.protocol === 'rediss:',
    display: `${u.protocol}//${u.username ? `${decodeURIComponent(u.username)}@` : ''}${u.host}${u.pathname === '/' ? '' : u.pathname}`,
  };
  if (u.username !== '') target.username = decodeURIComponent(u.username);
  if (u.password !== '') target.password = decodeURIComponent(u.password);
  return target;
}

/** Maps what ioredis or the server said to a kvtier error: bad credentials are KVTIER_AUTH. */
export function redisError(e: unknown, what: string): KvtierError {
  if (e instanceof KvtierError) return e;
  const message = e instanceof Error ? e.message : String(e);
  const auth = /WRONGPASS|NOAUTH|invalid password|invalid username-password|NOPERM/i.test(message);
  return new KvtierError(auth ? 'KVTIER_AUTH' : 'KVTIER_REDIS', `${what}: ${message}`, {
    cause: e,
  });
}

export interface OpenRedisOptions {
  /** How long the first connection may take (default 5 s). */
  connectTimeoutMs?: number;
  /** Longest pause between reconnection attempts after a connection is lost (default 1 s). */
  maxRetryDelayMs?: number;
}

function baseOptions(t: RedisTarget, o: OpenRedisOptions): RedisOptions {
  return {
    ...(t.username !== undefined ? { username: t.username } : {}),
    ...(t.password !== undefined ? { password: t.password } : {}),
    ...(t.tls ? { tls: { servername: t.host } } : {}),
    connectTimeout: o.connectTimeoutMs ?? 5000,
    lazyConnect: true,
    // Commands fail at once while Redis is away instead of queueing without bound: the index
    // is metadata, a node keeps serving without it and resynchronises when it returns.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    enableAutoPipelining: true,
  };
}

/**
 * Connects to the server at `url`. When that server is a Redis Cluster node, the connection is
 * replaced by a cluster client seeded from it, so commands go to the shard of their hash slot.
 */
export async function openRedis(
  url: string,
  options: OpenRedisOptions = {},
): Promise<{ client: RedisClient; mode: RedisMode; target: RedisTarget }> {
  const target = parseRedisUrl(url);
  const maxDelay = options.maxRetryDelayMs ?? 1000;
  const probe = new Redis({
    ...baseOptions(target, options),
    host: target.host,
    port: target.port,
    db: target.db,
    // The first connection either works or fails; retrying belongs to established ones.
    retryStrategy: () => null,
  });
  // A refused AUTH arrives as an 'error' event; connect() then only says the connection closed.
  let reason: unknown;
  probe.on('error', (e) => (reason ??= e));
  let clusterEnabled: boolean;
  try {
    await probe.connect();
    const info = await probe.info('cluster');
    clusterEnabled = /cluster_enabled:1/.test(info);
  } catch (e) {
    probe.disconnect();
    throw redisError(reason ?? e, `cannot use Redis at ${target.display}`);
  }
  probe.disconnect();

  if (!clusterEnabled) {
    const client = new Redis({
      ...baseOptions(target, options),
      host: target.host,
      port: target.port,
      db: target.db,
      retryStrategy: (times) => Math.min(50 * times, maxDelay),
    });
    client.on('error', () => {}); // state changes are followed through 'close' and 'ready'
    try {
      await client.connect();
    } catch (e) {
      client.disconnect();
      throw redisError(e, `cannot use Redis at ${target.display}`);
    }
    return { client, mode: 'standalone', target };
  }
  if (target.db !== 0) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `Redis Cluster has only database 0; the URL ${target.display} names another`,
    );
  }
  const redisOptions = baseOptions(target, options);
  // The cluster client connects its per-shard clients itself, and queues nothing either.
  delete redisOptions.lazyConnect;
  delete redisOptions.enableOfflineQueue;
  const client = new Cluster([{ host: target.host, port: target.port }], {
    redisOptions,
    lazyConnect: true,
    enableOfflineQueue: false,
    // Its auto-pipelines must stay within one slot group, which scripts with a variable key
    // count defeat; commands issued together still share each shard's connection unanswered.
    enableAutoPipelining: false,
    clusterRetryStrategy: (times) => Math.min(50 * times, maxDelay),
  });
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (e) {
    client.disconnect();
    throw redisError(e, `cannot use Redis Cluster at ${target.display}`);
  }
  return { client, mode: 'cluster', target };
}
