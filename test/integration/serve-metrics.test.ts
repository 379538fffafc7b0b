/**
 * `kvtier serve --metrics`: a real server process, scraped over real HTTP while a real peer
 * client and a real engine client put and get through it; the figures are checked against the
 * server's own `Warehouse.stats()` (read through the engine channel's stats request).
 */
import { networkInterfaces } from 'node:os';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { connect, type PeerClient, Region } from '../../lib/index.js';
import { type EngineClient } from '../../lib/engine-channel/client.js';
import {
  BLOCK_BYTES,
  connect as connectEngine,
  keys,
  kvFirst,
  randomPool,
  startEngineServe,
} from '../engine/channel-helpers.js';
import { killAll, runCli, TOKEN, type ServeProcess } from '../peer/serve-process.js';
import { tempDir, until } from '../helpers.js';
import { parseMetricsAddress } from '../../lib/apps/cli/serve-metrics.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Prometheus text exposition, the sample lines only. */
function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, k, v] of (m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)) labels[k!] = v!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const s = samples.find(
    (x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v),
  );
  if (!s) throw new Error(`no sample ${name} ${JSON.stringify(labels)}`);
  return s.value;
}

interface TierStatsLike {
  name: string;
  kind: string;
  hits: number;
  misses: number;
  bytesIn: number;
  bytesOut: number;
  evictions: number;
  usedBlocks: number;
  capacityBlocks: number;
  ioErrors: number;
  storedBlockBytes: number;
}

describe('kvtier serve --metrics', () => {
  const dir = tempDir('kvtier-metrics-');
  let serve: ServeProcess;
  let socket: string;
  let url: string;
  let peer: PeerClient;
  let engine: EngineClient;
  let host: string;

  const scrape = async (at = url): Promise<Sample[]> => {
    const res = await fetch(at);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    return parse(await res.text());
  };

  beforeAll(async () => {
    // A bare port: the server must bind loopback only.
    ({ serve, socket } = await startEngineServe(dir.path, ['--metrics', '0'], 1 << 20));
    const listening = await serve.waitFor('listening');
    host = listening.metricsHost as string;
    url = `http://127.0.0.1:${listening.metricsPort as number}/metrics`;
    peer = await connect(`127.0.0.1:${serve.port}`, { token: TOKEN, blockBytes: BLOCK_BYTES });
    engine = await connectEngine(socket);
  });

  afterAll(async () => {
    engine?.close();
    await peer?.close();
    await serve?.stop();
    killAll();
    dir.remove();
  });

  it('binds loopback when given only a port', async () => {
    expect(host).toBe('127.0.0.1');
    expect(parseMetricsAddress('9464')).toEqual({ host: '127.0.0.1', port: 9464 });
    expect(parseMetricsAddress('0.0.0.0:9464')).toEqual({ host: '0.0.0.0', port: 9464 });
    expect(parseMetricsAddress('[::1]:9464')).toEqual({ host: '::1', port: 9464 });
    // From any address of this machine other than loopback, nothing answers.
    const port = new URL(url).port;
    const outside = Object.values(networkInterfaces())
      .flat()
      .find((a) => a && a.family === 'IPv4' && !a.internal);
    if (outside) {
      await expect(fetch(`http://${outside.address}:${port}/metrics`)).rejects.toThrow();
    }
    await scrape();
  });

  it('counts what puts and gets through a peer client and an engine do, as stats() does', async () => {
    const before = await scrape();
    const n = 24;
    const region = Region.allocate(n * BLOCK_BYTES);
    try {
      new Uint8Array(region.buffer).fill(7);
      const ks = keys(n, 'metrics').map((k) => k.toString('hex'));
      expect((await peer.put(ks, region)).stored).toBe(n);
      expect((await peer.get(ks, region)).count).toBe(n);
      const absent = keys(5, 'absent').map((k) => k.toString('hex'));
      expect((await peer.get(absent, region.view(0, 5 * BLOCK_BYTES))).count).toBe(0);
    } finally {
      await region.close();
    }
    const { spec, bytes } = kvFirst(8);
    const pool = randomPool(bytes);
    try {
      await engine.registerHostPool(pool, spec, 'kv');
      const ek = keys(4, 'engine');
      expect((await engine.save('kv', ek, [0, 1, 2, 3])).stored).toBe(4);
      expect((await engine.load('kv', ek, [4, 5, 6, 7])).loaded).toEqual([true, true, true, true]);
      await expect(engine.load('kv', ek, [4, 4, 6, 7])).rejects.toMatchObject({
        code: 'KVTIER_BAD_ARGUMENT',
      });
      await engine.release('kv');
    } finally {
      await pool.close();
    }

    // Nothing else runs now: the scrape and stats() see the same counts.
    const after = await scrape();
    const { stats } = (await engine.stats()) as unknown as {
      stats: { gets: number; hits: number; misses: number; blocks: number; tiers: TierStatsLike[] };
    };
    expect(value(after, 'kvtier_gets_total')).toBe(stats.gets);
    expect(value(after, 'kvtier_hits_total')).toBe(stats.hits);
    expect(value(after, 'kvtier_misses_total')).toBe(stats.misses);
    expect(value(after, 'kvtier_blocks')).toBe(stats.blocks);
    expect(stats.tiers.length).toBeGreaterThan(0);
    for (const t of stats.tiers) {
      const l = { tier: t.name, kind: t.kind };
      expect(value(after, 'kvtier_tier_hits_total', l)).toBe(t.hits);
      expect(value(after, 'kvtier_tier_misses_total', l)).toBe(t.misses);
      expect(value(after, 'kvtier_tier_bytes_in_total', l)).toBe(t.bytesIn);
      expect(value(after, 'kvtier_tier_bytes_out_total', l)).toBe(t.bytesOut);
      expect(value(after, 'kvtier_tier_evictions_total', l)).toBe(t.evictions);
      expect(value(after, 'kvtier_tier_used_blocks', l)).toBe(t.usedBlocks);
      expect(value(after, 'kvtier_tier_capacity_blocks', l)).toBe(t.capacityBlocks);
      expect(value(after, 'kvtier_tier_io_errors_total', l)).toBe(t.ioErrors);
      const stored = value(after, 'kvtier_tier_stored_block_bytes', { ...l, codec: 'none' });
      expect(stored).toBe(t.storedBlockBytes);
      expect(stored).toBe(BLOCK_BYTES);
    }

    // And they moved by what was done: 24 + 4 keys found, 5 not.
    const moved = (name: string, labels: Record<string, string> = {}): number =>
      value(after, name, labels) - value(before, name, labels);
    expect(moved('kvtier_hits_total')).toBe(n + 4);
    expect(moved('kvtier_misses_total')).toBe(5);
    expect(moved('kvtier_blocks')).toBe(n + 4);
    expect(moved('kvtier_tier_bytes_in_total', { tier: 'host' })).toBe((n + 4) * BLOCK_BYTES);
    const count = (labels: Record<string, string>): number =>
      value(after, 'kvtier_operation_duration_seconds_count', labels);
    expect(count({ channel: 'peer', op: 'put' })).toBeGreaterThanOrEqual(1);
    expect(count({ channel: 'peer', op: 'get' })).toBeGreaterThanOrEqual(2);
    expect(count({ channel: 'engine', op: 'save' })).toBe(1);
    expect(count({ channel: 'engine', op: 'load' })).toBe(2);
    expect(value(after, 'kvtier_engine_errors_total', { code: 'KVTIER_BAD_ARGUMENT' })).toBe(1);
    expect(value(after, 'kvtier_engine_requests_total')).toBeGreaterThanOrEqual(5);
    expect(value(after, 'kvtier_peer_connections')).toBe(1);
    expect(value(after, 'kvtier_peer_connections_opened_total')).toBe(1);
    expect(value(after, 'kvtier_engine_connections')).toBe(1);
    const putBlocks = ['landed', 'placed', 'copied'].reduce(
      (s, path) => s + moved('kvtier_peer_put_blocks_total', { path }),
      0,
    );
    expect(putBlocks).toBe(n);
  });

  it('counts an authentication failure, and the AUTH error frame it was answered with', async () => {
    const before = await scrape();
    const failuresBefore = value(before, 'kvtier_peer_auth_failures_total');
    // A code never sent has no sample yet.
    const framesOf = (s: Sample[]): number =>
      s.some((x) => x.name === 'kvtier_peer_error_frames_total' && x.labels.code === 'auth')
        ? value(s, 'kvtier_peer_error_frames_total', { code: 'auth' })
        : 0;
    const framesBefore = framesOf(before);
    await expect(
      connect(`127.0.0.1:${serve.port}`, {
        token: 'not-the-secret-0123456789abcdef',
        blockBytes: BLOCK_BYTES,
      }),
    ).rejects.toMatchObject({ code: 'KVTIER_AUTH' });
    await until('the failure is counted', async () => {
      const s = await scrape();
      return (
        value(s, 'kvtier_peer_auth_failures_total') === failuresBefore + 1 &&
        value(s, 'kvtier_peer_errors_total', { reason: 'auth' }) === failuresBefore + 1 &&
        framesOf(s) === framesBefore + 1
      );
    });
  });

  /** `kvtier serve` of a tiny warehouse with `--metrics ADDRESS`, for the refusals. */
  const smallServe = (metrics: string): string[] => [
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--host-bytes',
    '1MiB',
    '--block-bytes',
    '4KiB',
    '--token-file',
    `${dir.path}/token`,
    '--metrics',
    metrics,
  ];

  it('refuses a bad address before anything starts', async () => {
    for (const bad of ['localhost:http', '127.0.0.1:70000', 'a:b:1']) {
      const r = await runCli(smallServe(bad));
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain('[KVTIER_BAD_ARGUMENT]');
      expect(r.stderr).toContain('--metrics');
      expect(r.stdout).toBe(''); // not even the listening line
    }
  });

  it('refuses an address it cannot bind, and closes what it opened', async () => {
    const taken = new URL(url).port;
    const r = await runCli(smallServe(taken));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--metrics cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE\)/);
    expect(r.stdout).not.toContain('"listening"');
  });
});
