/**
 * Done-when for the cluster: three `kvtier serve` processes on loopback sharing one Redis. An
 * engine process gets, from its own node, a block it never put, which the node fetches from the
 * peer that holds it. Stale entries and a killed node cost misses, never errors or wrong bytes.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { nodeKeys } from '../../lib/cluster/schema.js';
import { connectCluster, type ClusterView } from '../../lib/cluster/view.js';
import { connect } from '../../lib/peer/client.js';
import { chainKeys, type Key } from '../../lib/keys/keys.js';
import { tempDir, until } from '../helpers.js';
import {
  killAll,
  runCli,
  startServe,
  TOKEN,
  writeToken,
  type ServeProcess,
} from '../peer/serve-process.js';
import { haveRedisServer, startRedis, type RedisServer } from '../redis.js';

const haveRedis = haveRedisServer();
const BS = 64 << 10;
const LEASE_MS = 1500;
const DIST = fileURLToPath(new URL('../../dist/index.js', import.meta.url));

function chain(n: number, seed: number): Key[] {
  return chainKeys(
    Array.from({ length: n * 16 }, (_, i) => (i * 2654435761 + seed) >>> 0),
    { blockTokens: 16, namespace: `serve-${seed}` },
  ).keys();
}

/** Block contents derived from the key, so any reader can check every byte. */
function blocks(keys: readonly Key[]): Buffer {
  const out = Buffer.alloc(keys.length * BS);
  keys.forEach((k, i) => {
    const seed = Buffer.from(k, 'hex');
    for (let at = 0; at < BS; at += 32) seed.copy(out, i * BS + at, 0, Math.min(32, BS - at));
    out.writeUInt32LE(i, i * BS);
  });
  return out;
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

interface EngineAnswer {
  lookupPrefix: number;
  found: boolean[];
  hash: string;
  error?: string;
}

/** A separate engine process: connects to one node, looks the keys up, then gets them. */
function engine(dir: string, port: number, keys: readonly Key[]): Promise<EngineAnswer> {
  const script = join(dir, `engine-${Date.now()}-${Math.random().toString(16).slice(2)}.mjs`);
  writeFileSync(
    script,
    `import { createHash } from 'node:crypto';
import { connect } from ${JSON.stringify(DIST)};
const keys = ${JSON.stringify(keys)};
const c = await connect('127.0.0.1:${port}', { token: ${JSON.stringify(TOKEN)}, blockBytes: ${BS} });
try {
  const before = await c.lookup(keys);
  const dst = Buffer.alloc(keys.length * ${BS});
  const r = await c.get(keys, dst);
  const parts = r.found.map((f, i) => (f ? dst.subarray(i * ${BS}, (i + 1) * ${BS}) : Buffer.alloc(0)));
  const hash = createHash('sha256').update(Buffer.concat(parts)).digest('hex');
  process.stdout.write(JSON.stringify({ lookupPrefix: before.prefix, found: r.found, hash }));
} catch (e) {
  process.stdout.write(JSON.stringify({ error: String(e && e.code) + ' ' + String(e && e.message) }));
} finally {
  await c.close();
}
`,
  );
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => {
      try {
        resolve(JSON.parse(out) as EngineAnswer);
      } catch {
        reject(new Error(`engine exited ${code}: ${out} ${err}`));
      }
    });
  });
}

describe.runIf(haveRedis)('three kvtier serve nodes sharing one Redis', () => {
  let redis: RedisServer;
  let dir: { path: string; remove(): void };
  let tokenFile: string;
  const nodes: ServeProcess[] = [];
  let view: ClusterView;

  beforeAll(async () => {
    redis = await startRedis();
    dir = tempDir('kvtier-cluster-serve-');
    tokenFile = writeToken(dir.path);
    for (const id of ['n1', 'n2', 'n3']) {
      const s = await startServe({
        blockBytes: BS,
        hostBytes: 256 * BS,
        tokenFile,
        extra: ['--redis', redis.url, '--node-id', id, '--lease-ms', String(LEASE_MS)],
      });
      await s.waitFor('cluster_joined');
      nodes.push(s);
    }
    view = await connectCluster(redis.url, { refreshMs: 0 });
  });
  afterAll(async () => {
    await view?.close();
    await Promise.allSettled(nodes.map((n) => n.stop()));
    killAll();
    await redis?.stop();
    dir?.remove();
  });

  it('serves an engine a block it never put, fetched from the node that holds it', async () => {
    const [n1, , n3] = nodes as [ServeProcess, ServeProcess, ServeProcess];
    const keys = chain(24, 1);
    const data = blocks(keys);
    // Engine one (this process) puts the blocks into n1.
    const c1 = await connect(`127.0.0.1:${n1.port}`, { token: TOKEN, blockBytes: BS });
    try {
      expect((await c1.put(keys, data)).stored).toBe(24);
    } finally {
      await c1.close();
    }
    await until('n1 to publish', async () => (await view.rank(keys))[0]?.prefix === 24);
    const ranked = await view.rank(keys);
    expect(ranked.map((n) => [n.id, n.prefix])).toEqual([
      ['n1', 24],
      ['n2', 0],
      ['n3', 0],
    ]);
    expect(ranked[0]!.address).toBe(`127.0.0.1:${n1.port}`);

    // Engine two, another process, asks n3: n3 has none of it, fetches all from n1.
    const answer = await engine(dir.path, n3.port, keys);
    expect(answer.error).toBeUndefined();
    expect(answer.lookupPrefix).toBe(0);
    expect(answer.found).toEqual(keys.map(() => true));
    expect(answer.hash).toBe(sha(data));

    // n3 keeps what it fetched and says so in the index.
    await until(
      'n3 to publish its copies',
      async () => (await view.rank(keys, { nodes: ['n3'] }))[0]?.prefix === 24,
    );
    const again = await engine(dir.path, n3.port, keys);
    expect(again.lookupPrefix).toBe(24);
    expect(again.hash).toBe(sha(data));

    // cluster status sees all three, with their capacity.
    const r = await runCli(['cluster', 'status', '--redis', redis.url, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const status = JSON.parse(r.stdout) as {
      nodes: { id: string; address: string; capacityBytes: number; usedBytes: number }[];
    };
    expect(status.nodes.map((n) => n.id)).toEqual(['n1', 'n2', 'n3']);
    for (const n of status.nodes) expect(n.capacityBytes).toBe(256 * BS);
  });

  it('takes the longest prefix from the best peer and the rest from the next', async () => {
    const [n1, n2, n3] = nodes as [ServeProcess, ServeProcess, ServeProcess];
    const keys = chain(16, 2);
    const data = blocks(keys);
    const c1 = await connect(`127.0.0.1:${n1.port}`, { token: TOKEN, blockBytes: BS });
    const c2 = await connect(`127.0.0.1:${n2.port}`, { token: TOKEN, blockBytes: BS });
    try {
      await c1.put(keys.slice(0, 6), data.subarray(0, 6 * BS));
      await c2.put(keys, data);
      // n2 drops its first blocks: n1 now holds the longest prefix, n2 the rest.
      expect((await c2.delete(keys.slice(0, 6))).removed).toBe(6);
    } finally {
      await Promise.all([c1.close(), c2.close()]);
    }
    await until('the index to follow', async () => {
      const r = await view.rank(keys.slice(6), { nodes: ['n2'] });
      const p = await view.rank(keys, { nodes: ['n1', 'n2'] });
      return r[0]?.prefix === 10 && p[0]?.id === 'n1' && p[0]?.prefix === 6 && p[1]?.prefix === 0;
    });
    const answer = await engine(dir.path, n3.port, keys);
    expect(answer.found).toEqual(keys.map(() => true));
    expect(answer.hash).toBe(sha(data));
  });

  it('treats a stale entry as a miss: no error, no wrong bytes', async () => {
    const [, n2, n3] = nodes as [ServeProcess, ServeProcess, ServeProcess];
    const keys = chain(4, 3);
    // n2's index entry claims blocks n2 never had.
    const raw = new Redis(redis.port, '127.0.0.1');
    try {
      await raw.sadd(nodeKeys('n2').blocks, ...keys.map((k) => Buffer.from(k, 'hex')));
    } finally {
      raw.disconnect();
    }
    expect((await view.rank(keys, { nodes: ['n2'] }))[0]!.prefix).toBe(4);
    const answer = await engine(dir.path, n3.port, keys);
    expect(answer.error).toBeUndefined();
    expect(answer.found).toEqual([false, false, false, false]);
    expect(n2.child.exitCode).toBeNull();
    expect(n3.child.exitCode).toBeNull();
  });

  it('falls back cleanly when the holder is killed, and its entries expire', async () => {
    const [n1, , n3] = nodes as [ServeProcess, ServeProcess, ServeProcess];
    const keys = chain(8, 4);
    const data = blocks(keys);
    const c1 = await connect(`127.0.0.1:${n1.port}`, { token: TOKEN, blockBytes: BS });
    try {
      expect((await c1.put(keys, data)).stored).toBe(8);
    } finally {
      await c1.close();
    }
    await until(
      'n1 to publish',
      async () => (await view.rank(keys, { nodes: ['n1'] }))[0]?.prefix === 8,
    );
    await n1.stop('SIGKILL');
    // Its entries are still there (its lease has not run out): a get through n3 tries n1, fails
    // to reach it, and reports misses.
    expect((await view.rank(keys, { nodes: ['n1'] }))[0]?.prefix).toBe(8);
    const answer = await engine(dir.path, n3.port, keys);
    expect(answer.error).toBeUndefined();
    expect(answer.found).toEqual(keys.map(() => false));
    await until(
      'n1 to expire',
      async () => !(await view.status()).nodes.some((n) => n.id === 'n1'),
    );
    expect(await view.rank(keys, { nodes: ['n1'] })).toEqual([]);
    const status = await view.status();
    expect(status.nodes.map((n) => n.id)).toEqual(['n2', 'n3']);
    expect(n3.child.exitCode).toBeNull();
  });
});

describe.runIf(haveRedis)('kvtier serve --redis: bad input', () => {
  let redis: RedisServer;
  let dir: { path: string; remove(): void };
  beforeAll(async () => {
    redis = await startRedis({ password: 'cluster-secret' });
    dir = tempDir('kvtier-cluster-bad-');
  });
  afterAll(async () => {
    killAll();
    await redis?.stop();
    dir?.remove();
  });

  const base = (tokenFile: string): string[] => [
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--block-bytes',
    '4096',
    '--host-bytes',
    '1MiB',
    '--token-file',
    tokenFile,
  ];

  it('refuses malformed URLs, missing ids, wrong passwords and node-id collisions', async () => {
    const tokenFile = writeToken(dir.path);
    const bad = await runCli([...base(tokenFile), '--redis', 'localhost:6379', '--node-id', 'a']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('KVTIER_BAD_ARGUMENT');
    const noId = await runCli([...base(tokenFile), '--redis', redis.url]);
    expect(noId.stderr).toContain('KVTIER_BAD_ARGUMENT');
    const idWithout = await runCli([...base(tokenFile), '--node-id', 'a']);
    expect(idWithout.stderr).toContain('KVTIER_BAD_ARGUMENT');
    const wrong = await runCli([
      ...base(tokenFile),
      '--redis',
      `redis://:nope@127.0.0.1:${redis.port}`,
      '--node-id',
      'a',
    ]);
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toContain('KVTIER_AUTH');

    const first = await startServe({
      blockBytes: 4096,
      hostBytes: 1 << 20,
      tokenFile,
      extra: ['--redis', redis.url, '--node-id', 'same'],
    });
    await first.waitFor('cluster_joined');
    const second = await runCli([...base(tokenFile), '--redis', redis.url, '--node-id', 'same']);
    expect(second.code).not.toBe(0);
    expect(second.stderr).toContain('KVTIER_CONFLICT');
    const stopped = await first.stop();
    expect(stopped.code).toBe(0);
    expect(first.logs.some((l) => l.event === 'cluster_left')).toBe(true);
  });
});
