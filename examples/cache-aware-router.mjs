#!/usr/bin/env node
/**
 * A cache-aware request router in front of several engines, built on `cluster.rank()`.
 *
 * It starts a Redis server and three `kvtier serve` nodes on loopback (one per "engine"), then
 * replays a small multi-turn chat workload twice: once routing each request to the engine whose
 * warehouse already holds the longest prefix of its prompt, once round robin. Each engine looks
 * its prompt up in its own warehouse (blocks it holds itself), gets the cached blocks (a local
 * miss is fetched from the peer that holds it, through the cluster), and stores the blocks it
 * had to compute.
 *
 *   node examples/cache-aware-router.mjs [--requests 60] [--engines 3] [--redis URL] [--json]
 *
 * Needs `npm install` (which builds dist/) and redis-server on PATH unless --redis is given.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { chainKeys, connect, connectCluster } from 'kvtier';

const CLI = fileURLToPath(new URL('../dist/apps/cli/main.js', import.meta.url));
const BLOCK_TOKENS = 16;
const BLOCK_BYTES = 16 << 10;
const TOKEN = 'example-cluster-token-0123456789';

const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '60' },
    engines: { type: 'string', default: '3' },
    redis: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const requests = Number(args.requests);
const engineCount = Number(args.engines);
const say = args.json ? () => {} : (line) => console.log(line);

// ---------------------------------------------------------------------------------- processes

const started = [];
const dir = mkdtempSync(join(tmpdir(), 'kvtier-router-'));
const tokenFile = join(dir, 'token');
writeFileSync(tokenFile, TOKEN, { mode: 0o600 });

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Spawns a process and resolves once a stdout line satisfies `ready`. */
function launch(cmd, argv, ready) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    started.push(child);
    let out = '';
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`${cmd} exited (${code}): ${err}`)));
    child.stdout.on('data', (d) => {
      out += d;
      for (const line of out.split('\n')) {
        const hit = ready(line);
        if (hit !== undefined) return resolve({ child, hit });
      }
    });
  });
}

async function startRedis() {
  const port = await freePort();
  await launch(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    (line) => (line.includes('Ready to accept connections') ? true : undefined),
  );
  return `redis://127.0.0.1:${port}`;
}

async function startNode(redis, id) {
  const argv = [
    CLI,
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--block-bytes',
    String(BLOCK_BYTES),
    '--host-bytes',
    String(512 * BLOCK_BYTES),
    '--token-file',
    tokenFile,
    '--redis',
    redis,
    '--node-id',
    id,
  ];
  let port;
  let joined = false;
  await launch(process.execPath, argv, (line) => {
    if (!line.startsWith('{') || !line.endsWith('}')) return undefined;
    const l = JSON.parse(line);
    if (l.event === 'listening') port = l.port;
    if (l.event === 'cluster_joined') joined = true;
    return port !== undefined && joined ? true : undefined;
  });
  return { id, port, client: await connect(`127.0.0.1:${port}`, { token: TOKEN }) };
}

// ----------------------------------------------------------------------------------- workload

/** A seeded random generator (mulberry32), so every run routes the same requests. */
function random(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Chats that grow turn by turn; pairs of them share a system prompt. */
function workload(n) {
  const rnd = random(7);
  const systems = [0, 1, 2].map((s) => Array.from({ length: 128 }, (_, i) => 1000 * s + i));
  const chats = Array.from({ length: 8 }, (_, c) => [...systems[c % 3]]);
  const out = [];
  for (let r = 0; r < n; r++) {
    const c = Math.floor(rnd() * chats.length);
    const turn = Array.from({ length: 48 + Math.floor(rnd() * 48) }, () =>
      Math.floor(rnd() * 50_000),
    );
    chats[c].push(...turn);
    out.push({ chat: c, tokens: [...chats[c]] });
  }
  return out;
}

/** Block contents derived from the key: any engine would compute the same bytes. */
function compute(keys) {
  const out = Buffer.alloc(keys.length * BLOCK_BYTES);
  keys.forEach((k, i) => Buffer.from(k, 'hex').copy(out, i * BLOCK_BYTES));
  return out;
}

// ------------------------------------------------------------------------------------ routing

async function replay(policy, engines, cluster, reqs) {
  const namespace = `router-${policy}`; // the two runs do not share a cache
  const inFlight = Object.fromEntries(engines.map((e) => [e.id, 0]));
  const routed = Object.fromEntries(engines.map((e) => [e.id, 0]));
  let blocks = 0;
  let local = 0;
  let cluster_ = 0;
  let next = 0;
  for (const req of reqs) {
    const keys = chainKeys(req.tokens, { blockTokens: BLOCK_TOKENS, namespace }).keys();
    let engine;
    if (policy === 'cache-aware') {
      // Longest cached prefix first; ties (a prompt nobody has seen) by the router's own load
      // figure. This replay sends one request at a time, so the figure is requests routed so
      // far plus those in flight; a real router would use its engines' queue depths.
      const load = Object.fromEntries(engines.map((e) => [e.id, routed[e.id] + inFlight[e.id]]));
      // Without the index (Redis down: rank() rejects with KVTIER_REDIS) the router still
      // routes, round robin.
      const ranked = await cluster
        .rank(keys, { nodes: engines.map((e) => e.id), load })
        .catch(() => []);
      engine = engines.find((e) => e.id === ranked[0]?.id) ?? engines[next++ % engines.length];
    } else {
      engine = engines[next++ % engines.length];
    }
    routed[engine.id]++;
    inFlight[engine.id]++;
    try {
      // The engine: what do I hold myself, what can the warehouse get me, what must I compute?
      const { prefix: mine } = await engine.client.lookup(keys);
      const dst = Buffer.alloc(keys.length * BLOCK_BYTES);
      const got = await engine.client.get(keys, dst);
      const missing = keys.slice(got.prefix);
      if (missing.length > 0) await engine.client.put(missing, compute(missing));
      blocks += keys.length;
      local += mine;
      cluster_ += got.prefix;
    } finally {
      inFlight[engine.id]--;
    }
    // The node publishes what it stored within a turn of its event loop; requests of a real
    // deployment are that far apart anyway.
    await sleep(2);
  }
  return {
    policy,
    requests: reqs.length,
    blocks,
    localHitRate: local / blocks,
    clusterHitRate: cluster_ / blocks,
    routed,
  };
}

// --------------------------------------------------------------------------------------- main

async function main() {
  const redis = args.redis ?? (await startRedis());
  say(`index: ${redis}`);
  const engines = [];
  for (let i = 0; i < engineCount; i++) engines.push(await startNode(redis, `engine-${i}`));
  say(`engines: ${engines.map((e) => `${e.id} on 127.0.0.1:${e.port}`).join(', ')}`);
  const cluster = await connectCluster(redis, { refreshMs: 500 });
  try {
    const reqs = workload(requests);
    const results = [];
    for (const policy of ['cache-aware', 'round-robin']) {
      results.push(await replay(policy, engines, cluster, reqs));
    }
    if (args.json) {
      console.log(JSON.stringify({ engines: engines.length, results }));
      return;
    }
    say('');
    say('policy        requests  held by the chosen engine  served by the warehouse  routed');
    for (const r of results) {
      say(
        `${r.policy.padEnd(12)}  ${String(r.requests).padStart(8)}  ${`${(100 * r.localHitRate).toFixed(1)} %`.padStart(25)}  ${`${(100 * r.clusterHitRate).toFixed(1)} %`.padStart(23)}  ${Object.values(r.routed).join('/')}`,
      );
    }
  } finally {
    await cluster.close();
    await Promise.all(engines.map((e) => e.client.close()));
  }
}

try {
  await main();
} finally {
  for (const child of started.reverse()) {
    if (child.exitCode === null) {
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await gone;
    }
  }
  rmSync(dir, { recursive: true, force: true });
}
