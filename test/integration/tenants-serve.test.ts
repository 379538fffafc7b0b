/**
 * Tenants through a real `kvtier serve --tenants` process (docs/tenants.md): the config is parsed
 * strictly at start (nothing is served from a faulty one); tenant B's client, trying every way to
 * reach tenant A's blocks (A's content keys, the raw key bytes A sent, keys A's namespace salt
 * would give, A's name with B's token), finds nothing or is refused with KVTIER_AUTH; and the
 * server's own per-tenant counters, read with `kvtier tenants` and from the metrics, show A's
 * blocks untouched. Results and counters are checked, never timings.
 */
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { chainKeys, connect, isKvtierError, type PeerClient } from '../../lib/index.js';
import {
  connect as connectEngine,
  BLOCK_BYTES as ENGINE_BLOCK_BYTES,
  keys as engineKeys,
  kvFirst,
  randomPool,
} from '../engine/channel-helpers.js';
import { randomBytes, tempDir } from '../helpers.js';
import { killAll, runCli, startServe, type ServeProcess } from '../peer/serve-process.js';

const BS = 4096;
const BLOCK_TOKENS = 16;
const tokens = {
  a: 'tenant-a-token-0123456789abcdef',
  b: 'tenant-b-token-0123456789abcdef',
  op: 'operator-token-0123456789abcdef',
};
const dir = tempDir('kvtier-tenants-serve-');

interface Moved {
  blocks: number;
  bytes: number;
  tokens: number;
}
interface Stats {
  name: string;
  retention?: string;
  tiers: {
    name: string;
    blocks: number;
    usedBytes: number;
    quotaBytes?: number;
    written: Moved;
    read: Moved;
    evicted: Moved;
    expired: Moved;
  }[];
  written: Moved;
  read: Moved;
  evicted: Moved;
  expired: Moved;
}

function config(doc: unknown, name = 'tenants.json'): string {
  const path = join(dir.path, name);
  writeFileSync(path, JSON.stringify(doc, null, 2));
  return path;
}

const goodConfig = {
  blockTokens: BLOCK_TOKENS,
  retentionClasses: { short: '5m', long: '1h' },
  operatorTokenFile: 'op.token',
  tenants: [
    { name: 'a', token: tokens.a, quota: { host: { share: 0.5 } }, retention: 'long' },
    { name: 'b', token: tokens.b, quota: { host: { bytes: 64 * BS } }, retention: 'short' },
  ],
};

function serveArgs(configPath: string): string[] {
  return [
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--block-bytes',
    String(BS),
    '--host-bytes',
    String(256 * BS),
    '--tenants',
    configPath,
  ];
}

afterAll(() => {
  killAll();
  dir.remove();
});

beforeAll(() => {
  writeFileSync(join(dir.path, 'op.token'), `${tokens.op}\n`, { mode: 0o600 });
});

describe('serve --tenants refuses a faulty config at start', () => {
  const cases: [string, unknown, RegExp][] = [
    [
      'an unknown field',
      { ...goodConfig, tenants: [{ ...goodConfig.tenants[0], quotas: {} }] },
      /unknown field 'quotas'/,
    ],
    [
      'a token shared by two tenants, naming both',
      {
        ...goodConfig,
        tenants: [goodConfig.tenants[0], { ...goodConfig.tenants[1], token: tokens.a }],
      },
      /tenant 'b' has the same token as tenant 'a'/,
    ],
    [
      "a tenant with the operator's token",
      { ...goodConfig, tenants: [{ ...goodConfig.tenants[0], token: tokens.op }] },
      /tenant 'a' has the same token as the operator/,
    ],
    [
      'a retention class not configured',
      { ...goodConfig, tenants: [{ ...goodConfig.tenants[0], retention: 'forever' }] },
      /retention class "forever" is not configured/,
    ],
    [
      'a token shorter than 16 bytes',
      { ...goodConfig, tenants: [{ ...goodConfig.tenants[0], token: 'short' }] },
      /at least 16/,
    ],
    [
      'a quota on a tier the server does not have',
      { ...goodConfig, tenants: [{ ...goodConfig.tenants[0], quota: { file: { share: 0.5 } } }] },
      /no tier 'file'/,
    ],
    ['no blockTokens', { ...goodConfig, blockTokens: undefined }, /blockTokens/],
    [
      'two tenants of one name',
      { ...goodConfig, tenants: [goodConfig.tenants[0], { ...goodConfig.tenants[1], name: 'a' }] },
      /a second tenant named 'a'/,
    ],
  ];
  it.each(cases)('%s', async (_what, doc, message) => {
    const r = await runCli(serveArgs(config(doc, 'bad.json')));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toMatch(/\[KVTIER_BAD_ARGUMENT\]/);
    expect(r.stdout).not.toMatch(/"listening"/);
  });

  it('and --tenants with --engine-socket or --token-file', async () => {
    const path = config(goodConfig);
    const engine = await runCli([...serveArgs(path), '--engine-socket', join(dir.path, 'e.sock')]);
    expect(engine.code).toBe(1);
    expect(engine.stderr).toMatch(/--engine-socket.*\[KVTIER_BAD_ARGUMENT\]/);
    const token = await runCli([...serveArgs(path), '--token-file', join(dir.path, 'op.token')]);
    expect(token.code).toBe(1);
    expect(token.stderr).toMatch(/--token-file.*\[KVTIER_BAD_ARGUMENT\]/);
  });
});

describe('isolation through serve', () => {
  let server: ServeProcess;
  let a: PeerClient;
  let b: PeerClient;
  const url = (): string => `127.0.0.1:${server.port}`;
  // A's prompt: a chain of 8 blocks.
  const prompt = Uint32Array.from({ length: 8 * BLOCK_TOKENS }, (_, i) => (i * 7919) % 50_000);
  const aKeys = [...chainKeys(prompt, { blockTokens: BLOCK_TOKENS })];
  const aData = randomBytes(aKeys.length * BS);

  async function tenantsTable(): Promise<Stats[]> {
    const tokenFile = join(dir.path, 'op.token');
    const r = await runCli(['tenants', '--connect', url(), '--token-file', tokenFile, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    return (JSON.parse(r.stdout) as { tenants: Stats[] }).tenants;
  }

  beforeAll(async () => {
    server = await startServe({
      blockBytes: BS,
      hostBytes: 256 * BS,
      extra: ['--tenants', config(goodConfig), '--metrics', '127.0.0.1:0'],
    });
    a = await connect(url(), { token: tokens.a, tenant: 'a' });
    b = await connect(url(), { token: tokens.b, tenant: 'b' });
    expect((await a.put(aKeys, aData)).stored).toBe(aKeys.length);
  });

  afterAll(async () => {
    await a?.close();
    await b?.close();
    await server?.stop();
  });

  it("B finds none of A's blocks: not by A's content keys, raw key bytes, or A's namespace", async () => {
    const before = (await tenantsTable()).find((t) => t.name === 'a')!;
    expect(before.written.blocks).toBe(aKeys.length);
    expect(before.written.tokens).toBe(aKeys.length * BLOCK_TOKENS);
    // 1. The same prompt, hence the same content keys.
    const sameContent = [...chainKeys(prompt, { blockTokens: BLOCK_TOKENS })];
    // 2. The raw key bytes A sent (seen on the wire, say), as bytes rather than hex.
    const rawBytes = aKeys.map((k) => Buffer.from(k, 'hex'));
    // 3. Keys of A's namespace as a client could compute them with a salt of its choosing: the
    // server derives namespaces itself, so whatever the client hashes in stays a client key.
    const salted = [
      ...chainKeys(prompt, { blockTokens: BLOCK_TOKENS, namespace: 'a' }),
      ...aKeys.map((k) => createHash('sha256').update('a').update(k).digest('hex')),
    ];
    for (const keys of [sameContent, rawBytes, salted]) {
      expect((await b.lookup(keys)).present.every((p) => !p)).toBe(true);
      const got = await b.get(keys, Buffer.alloc(keys.length * BS));
      expect(got.count).toBe(0);
      expect((await b.delete(keys)).removed).toBe(0);
    }
    // 4. A's name with B's token.
    let refused: unknown;
    try {
      await connect(url(), { token: tokens.b, tenant: 'a', reconnect: false });
    } catch (e) {
      refused = e;
    }
    expect(isKvtierError(refused) && refused.code).toBe('KVTIER_AUTH');

    // A's blocks are all there, with their bytes, and A's counters did not move except for A's
    // own read below; B's reads found nothing.
    const mid = await tenantsTable();
    const aMid = mid.find((t) => t.name === 'a')!;
    expect(aMid.read).toEqual(before.read);
    expect(aMid.evicted.blocks).toBe(0);
    expect(aMid.tiers.find((t) => t.name === 'host')!.blocks).toBe(aKeys.length);
    expect(mid.find((t) => t.name === 'b')!.read.blocks).toBe(0);
    const back = Buffer.alloc(aData.length);
    expect((await a.get(aKeys, back)).count).toBe(aKeys.length);
    expect(back.equals(aData)).toBe(true);
    const after = (await tenantsTable()).find((t) => t.name === 'a')!;
    expect(after.read.blocks - before.read.blocks).toBe(aKeys.length);
    expect(after.read.tokens - before.read.tokens).toBe(aKeys.length * BLOCK_TOKENS);
  });

  it('the metrics carry the same per-tenant figures', async () => {
    const listening = await server.waitFor('listening');
    const text = await (
      await fetch(`http://127.0.0.1:${String(listening.metricsPort)}/metrics`)
    ).text();
    const table = await tenantsTable();
    const aStats = table.find((t) => t.name === 'a')!;
    // One sample by name and labels, whatever order the labels are printed in.
    const line = (name: string, labels: Record<string, string>): number => {
      const found = text.split('\n').find((l) => {
        const m = /^([a-z_]+)\{([^}]*)\} /.exec(l);
        if (!m || m[1] !== name) return false;
        return Object.entries(labels).every(([k, v]) => m[2]!.split(',').includes(`${k}="${v}"`));
      });
      expect(found, `${name} ${JSON.stringify(labels)}`).toBeDefined();
      return Number(found!.split(' ').pop());
    };
    expect(line('kvtier_tenant_blocks_total', { tenant: 'a', event: 'written' })).toBe(
      aStats.written.blocks,
    );
    expect(line('kvtier_tenant_tokens_total', { tenant: 'a', event: 'read' })).toBe(
      aStats.read.tokens,
    );
    expect(line('kvtier_tenant_tier_used_bytes', { tenant: 'a', tier: 'host' })).toBe(
      aStats.tiers.find((t) => t.name === 'host')!.usedBytes,
    );
    expect(line('kvtier_tenant_tier_quota_bytes', { tenant: 'b', tier: 'host' })).toBe(64 * BS);
    // Per tier and event: the server's puts landed in the host tier, and were read from it.
    const host = aStats.tiers.find((t) => t.name === 'host')!;
    expect(host.written.blocks).toBe(aStats.written.blocks);
    expect(host.read.blocks).toBe(aStats.read.blocks);
    for (const event of ['written', 'read', 'evicted', 'expired'] as const) {
      expect(
        line('kvtier_tenant_tier_event_blocks_total', { tenant: 'a', tier: 'host', event }),
      ).toBe(host[event].blocks);
    }
    expect(
      line('kvtier_tenant_tier_event_tokens_total', {
        tenant: 'a',
        tier: 'host',
        event: 'written',
      }),
    ).toBe(aKeys.length * BLOCK_TOKENS);
    // The tenants' requests are timed like any peer request.
    const count = (op: string): number =>
      line('kvtier_operation_duration_seconds_count', { channel: 'peer', op });
    expect(count('put')).toBe(1);
    expect(count('get')).toBeGreaterThan(0);
  });

  it("the human table names each tenant; a tenant's token gets KVTIER_AUTH", async () => {
    const tokenFile = join(dir.path, 'op.token');
    const r = await runCli(['tenants', '--connect', url(), '--token-file', tokenFile]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^tenant\s+retention\s+tier/m);
    expect(r.stdout).toMatch(/^a\s+long\s+host\s+8\s/m);
    // Each tenant's tiers, then its totals: a wrote its 8 blocks of BLOCK_TOKENS tokens.
    expect(r.stdout).toMatch(
      new RegExp(`^\\s+total\\s+8\\s+\\S+\\s+-\\s+${8 * BLOCK_TOKENS}\\s`, 'm'),
    );
    expect(r.stdout).toMatch(/^b\s+short\s+host\s/m);
    const aFile = join(dir.path, 'a.token');
    writeFileSync(aFile, tokens.a);
    const refused = await runCli(['tenants', '--connect', url(), '--token-file', aFile]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/\[KVTIER_AUTH\]/);
  });

  it("a noisy neighbour: B writing far past its quota leaves A's blocks and hits intact", async () => {
    const before = (await tenantsTable()).find((t) => t.name === 'a')!;
    // B's quota is 64 blocks; it writes 4 times that.
    for (let round = 0; round < 4; round++) {
      const keys = Array.from({ length: 64 }, (_, i) =>
        createHash('sha256').update(`b-${round}-${i}`).digest('hex'),
      );
      await b.put(keys, randomBytes(keys.length * BS));
    }
    const table = await tenantsTable();
    const bStats = table.find((t) => t.name === 'b')!;
    expect(bStats.tiers.find((t) => t.name === 'host')!.usedBytes).toBeLessThanOrEqual(64 * BS);
    // B's accounting reconciles: what it wrote, less what left, is what it holds.
    const held = bStats.tiers.find((t) => t.name === 'host')!.blocks;
    expect(bStats.written.blocks - bStats.evicted.blocks - bStats.expired.blocks).toBe(held);
    expect(bStats.evicted.blocks).toBeGreaterThan(0);
    expect(bStats.written.tokens).toBe(bStats.written.blocks * BLOCK_TOKENS);
    const aAfter = table.find((t) => t.name === 'a')!;
    expect(aAfter.evicted.blocks).toBe(before.evicted.blocks);
    const back = Buffer.alloc(aData.length);
    expect((await a.get(aKeys, back)).count).toBe(aKeys.length);
    expect(back.equals(aData)).toBe(true);
  });
});

describe('an engine socket bound to a tenant (--engine-tenant)', () => {
  it("saves and loads in its tenant's namespace only", async () => {
    const socket = join(dir.path, 'engine.sock');
    const server = await startServe({
      blockBytes: ENGINE_BLOCK_BYTES,
      hostBytes: 256 * ENGINE_BLOCK_BYTES,
      extra: [
        '--tenants',
        config(goodConfig, 'engine.json'),
        '--engine-socket',
        socket,
        '--engine-tenant',
        'a',
      ],
    });
    const url = `127.0.0.1:${server.port}`;
    const engine = await connectEngine(socket);
    const a = await connect(url, { token: tokens.a, tenant: 'a' });
    const b = await connect(url, { token: tokens.b, tenant: 'b' });
    const { spec, bytes } = kvFirst(8);
    const pool = randomPool(bytes);
    try {
      await engine.registerHostPool(pool, spec, 'kv');
      const ek = engineKeys(4, 'engine-tenant');
      expect((await engine.save('kv', ek, [0, 1, 2, 3])).stored).toBe(4);
      const hex = ek.map((k) => k.toString('hex'));
      // Tenant a finds the engine's blocks by the same keys; tenant b does not.
      expect((await a.lookup(hex)).present).toEqual([true, true, true, true]);
      expect((await b.lookup(hex)).present).toEqual([false, false, false, false]);
      // And the engine finds what tenant a put, not what b put.
      const ak = engineKeys(2, 'from-a').map((k) => k.toString('hex'));
      const bk = engineKeys(2, 'from-b').map((k) => k.toString('hex'));
      await a.put(ak, randomBytes(2 * ENGINE_BLOCK_BYTES));
      await b.put(bk, randomBytes(2 * ENGINE_BLOCK_BYTES));
      const loadA = await engine.load(
        'kv',
        ak.map((k) => Buffer.from(k, 'hex')),
        [4, 5],
      );
      expect(loadA.loaded).toEqual([true, true]);
      const loadB = await engine.load(
        'kv',
        bk.map((k) => Buffer.from(k, 'hex')),
        [6, 7],
      );
      expect(loadB.loaded).toEqual([false, false]);
      // The engine's stats name its own tenant only.
      type EngineStats = { stats: { tenants?: Stats[]; blocks: number; hits: number } };
      const { stats } = (await engine.stats()) as unknown as EngineStats;
      expect(stats.tenants?.map((t) => t.name)).toEqual(['a']);
      expect(stats.tenants?.[0]?.written.blocks).toBe(6);
      expect(stats.blocks).toBe(6);
      // Tenant b's puts and hits do not show in any figure the engine can read (no side channel).
      const before = JSON.stringify(stats);
      const more = engineKeys(3, 'more-from-b').map((k) => k.toString('hex'));
      await b.put(more, randomBytes(3 * ENGINE_BLOCK_BYTES));
      expect((await b.get(more, Buffer.alloc(3 * ENGINE_BLOCK_BYTES))).found).toEqual([
        true,
        true,
        true,
      ]);
      const after = (await engine.stats()) as unknown as EngineStats;
      expect(JSON.stringify(after.stats)).toBe(before);
      await engine.release('kv');
    } finally {
      engine.close();
      await a.close();
      await b.close();
      await server.stop();
    }
  });

  it('--engine-tenant must name a tenant of the config, and goes with --tenants', async () => {
    const path = config(goodConfig);
    const socket = join(dir.path, 'e2.sock');
    const unknown = await runCli([
      ...serveArgs(path),
      '--engine-socket',
      socket,
      '--engine-tenant',
      'zed',
    ]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/--engine-tenant zed: no such tenant.*\[KVTIER_BAD_ARGUMENT\]/);
    const alone = await runCli([
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--block-bytes',
      String(BS),
      '--host-bytes',
      String(256 * BS),
      '--token-file',
      join(dir.path, 'op.token'),
      '--engine-tenant',
      'a',
    ]);
    expect(alone.code).toBe(1);
    expect(alone.stderr).toMatch(/--engine-tenant goes with --tenants/);
  });
});
