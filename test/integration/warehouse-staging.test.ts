// Predictive prefetch in the Warehouse (option predictivePrefetch): real file tier, real bytes,
// an injected clock; the timer's ticks are waited for (stats().predictivePrefetch.ticks), never
// slept for.
import { afterAll, describe, expect, it } from 'vitest';

import {
  connect,
  isKvtierError,
  PeerServer,
  Warehouse,
  type WarehouseOptions,
} from '../../lib/index.js';
import { ServeMetrics } from '../../lib/apps/cli/serve-metrics.js';
import {
  BS,
  chain,
  conversations,
  dirs,
  open,
  reconciles,
  removeDirs,
  S,
  staging,
  ticks,
  where,
  X,
} from './staging-helpers.js';
import { randomBytes, tempDir, until } from '../helpers.js';

afterAll(removeDirs);

describe('Warehouse predictive prefetch (predictivePrefetch)', () => {
  it('stages a conversation predicted back soon from the file tier to host memory; a get reads it there', async () => {
    const s = await open({ bytesPerSecond: 1e9 });
    await conversations(s);
    const top = s.policies[0]!;
    const learned = (): number[] => [...top.model.events, ...top.model.atRisk];
    const before0 = learned();
    // 6 s later X is most likely over and S is due: S's blocks come back up with no get.
    s.clock.t = 10_000;
    await until('S staged into host memory', () => S.every((k) => where(s)(k) === 0));
    // Staging is no request: the model saw no return (an insertion of a remembered key would
    // count as S coming back).
    expect(learned()).toEqual(before0);
    const before = s.w.stats();
    expect(before.predictivePrefetch!.active).toBe(true);
    expect(before.predictivePrefetch!.tiers[0]!.staged).toBeGreaterThanOrEqual(4);
    // Staged blocks rejoined S's group (no request of their own): S keeps its class's worth,
    // and is not forecast again.
    expect(top.worth(S[0]!, 10_000)).toBeGreaterThan(top.worth(X[0]!, 10_000));
    expect(top.forecast(10_000, 16)).not.toEqual(expect.arrayContaining([S[0]]));
    // X, worth less now, went down to the file tier, where its bytes still are.
    expect(X.map(where(s))).toEqual([1, 1, 1, 1]);

    const dst = Buffer.alloc(4 * BS);
    const got = await s.w.get(S, dst, { request: 's3' });
    expect(got.tiers).toEqual([0, 0, 0, 0]);
    S.forEach((k, i) =>
      expect(dst.subarray(i * BS, (i + 1) * BS).equals(s.data.get(k)!)).toBe(true),
    );
    const after = s.w.stats();
    expect(after.tiers[0]!.hits - before.tiers[0]!.hits).toBe(4);
    expect(after.tiers[1]!.hits - before.tiers[1]!.hits).toBe(0);
    const p = after.predictivePrefetch!;
    expect(p.tiers[0]!.read - before.predictivePrefetch!.tiers[0]!.read).toBe(4);
    reconciles(p);
    await s.w.close();
    reconciles(staging(s));
  });

  it('counts staged blocks a peer GET reads (served from host memory by lend) as read', async () => {
    const s = await open({ bytesPerSecond: 1e9 });
    await conversations(s);
    s.clock.t = 10_000;
    await until('S staged into host memory', () => S.every((k) => where(s)(k) === 0));
    const before = staging(s).tiers[0]!;
    expect(before.resident).toBeGreaterThanOrEqual(4);
    const secret = Buffer.from('staging-lend-secret-0123456789abcdef');
    const server = PeerServer.start({ host: '127.0.0.1', port: 0, warehouse: s.w, secret });
    const client = await connect(`127.0.0.1:${server.port}`, { token: secret.toString() });
    try {
      const dst = Buffer.alloc(4 * BS);
      const got = await client.get(S, dst);
      expect(got.found).toEqual([true, true, true, true]);
      S.forEach((k, i) =>
        expect(dst.subarray(i * BS, (i + 1) * BS).equals(s.data.get(k)!)).toBe(true),
      );
    } finally {
      await client.close();
      await server.close();
    }
    const p = staging(s);
    expect(p.tiers[0]!.read - before.read).toBe(4);
    expect(before.resident - p.tiers[0]!.resident).toBe(4);
    reconciles(p);
    await s.w.close();
  });

  it('does not stage a forecast group worth less than host memory’s victim', async () => {
    const s = await open({ bytesPerSecond: 1e9 });
    await conversations(s);
    const top = s.policies[0]!;
    // At 4 s, S is forecast (remembered, worth more than 0) but worth less than X, which it
    // would displace.
    expect(top.forecast(4000, 16)).toEqual(expect.arrayContaining(S));
    expect(top.worth(S[0]!, 4000)).toBeGreaterThan(0);
    expect(top.worth(S[0]!, 4000)).toBeLessThan(top.victimWorth(4000));
    await until('a refusal', () => staging(s).refused > 0);
    await ticks(s, 3);
    expect(S.map(where(s))).toEqual([1, 1, 1, 1]);
    expect(X.map(where(s))).toEqual([0, 0, 0, 0]);
    expect(staging(s).tiers[0]!.staged).toBe(0);
    await s.w.close();
  });

  it('stages no more than its byte budget: one block per second of clock, at most one second saved', async () => {
    const s = await open({ bytesPerSecond: BS });
    await conversations(s);
    const staged = (): number => staging(s).tiers[0]!.staged;
    s.clock.t = 10_000;
    await until('one block staged', () => staged() === 1);
    // The clock stands still: more ticks, no more credit, nothing more staged.
    await ticks(s, 5);
    expect(staged()).toBe(1);
    // Half a second: half a block of credit.
    s.clock.t += 500;
    await ticks(s, 5);
    expect(staged()).toBe(1);
    s.clock.t += 600;
    await until('a second block staged', () => staged() === 2);
    await ticks(s, 5);
    expect(staged()).toBe(2);
    // Five seconds earn one block, not five: the credit is capped (here at one block).
    s.clock.t += 5000;
    await until('a third block staged', () => staged() === 3);
    await ticks(s, 5);
    expect(staged()).toBe(3);
    expect(S.slice(0, 3).map(where(s))).toEqual([0, 0, 0]);
    reconciles(staging(s));
    await s.w.close();
  });

  it('closes while staging: no error, no work after close, every block readable after reopen', async () => {
    const s = await open({ bytesPerSecond: 1e9, intervalMs: 1 });
    await conversations(s);
    s.clock.t = 10_000;
    // Close as soon as the first block is staged (the job goes on to the next one).
    await until('a block staged', () => staging(s).tiers[0]!.staged > 0);
    await s.w.close();
    const after = staging(s);
    expect(after.tiers[0]!.staged).toBeLessThanOrEqual(4);
    reconciles(after);
    // No tick and no staging after close resolved, whatever the clock does.
    // Waited for by counting: an interval as short as the staging timer's, started after it,
    // fires after it would have.
    s.clock.t = 20_000;
    let fired = 0;
    const probe = setInterval(() => fired++, 1);
    await until('three 1 ms intervals', () => fired >= 3).finally(() => clearInterval(probe));
    expect(staging(s)).toEqual(after);
    // Every block put is on disk: reopen without staging and read them all back.
    const again = await Warehouse.open({
      blockBytes: BS,
      tiers: [
        { kind: 'host', bytes: 4 * BS },
        { kind: 'file', dir: s.dir, bytes: 32 * BS },
      ],
    });
    const keys = [...S, ...X];
    const dst = Buffer.alloc(keys.length * BS);
    const got = await again.get(keys, dst);
    expect(got.count).toBe(keys.length);
    keys.forEach((k, i) =>
      expect(dst.subarray(i * BS, (i + 1) * BS).equals(s.data.get(k)!)).toBe(true),
    );
    await again.close();
  });

  it('serve --metrics exposes the counters (kvtier_prefetch_*), only for a warehouse that stages', async () => {
    const s = await open({ bytesPerSecond: 1e9 });
    await conversations(s);
    s.clock.t = 10_000;
    await until('S staged into host memory', () => S.every((k) => where(s)(k) === 0));
    await s.w.get(S, Buffer.alloc(4 * BS), { request: 's3' });
    const p = staging(s);
    const text = await new ServeMetrics(s.w).registry.metrics();
    const value = (series: string): number => {
      const line = text.split('\n').find((l) => l.startsWith(`${series} `));
      expect(line, series).toBeDefined();
      return Number(line!.split(' ').pop());
    };
    expect(value('kvtier_prefetch_active')).toBe(1);
    expect(value('kvtier_prefetch_staged_blocks_total{tier="host"}')).toBe(p.tiers[0]!.staged);
    expect(value('kvtier_prefetch_read_blocks_total{tier="host"}')).toBe(p.tiers[0]!.read);
    expect(p.tiers[0]!.read).toBeGreaterThanOrEqual(4);
    expect(value('kvtier_prefetch_evicted_unread_blocks_total{tier="host"}')).toBe(
      p.tiers[0]!.evictedUnread,
    );
    expect(value('kvtier_prefetch_resident_blocks{tier="host"}')).toBe(p.tiers[0]!.resident);
    expect(value('kvtier_prefetch_refused_blocks_total')).toBe(p.refused);
    expect(value('kvtier_prefetch_failed_blocks_total')).toBe(p.failed);
    await s.w.close();
    const plain = await Warehouse.open({
      blockBytes: BS,
      tiers: [{ kind: 'host', bytes: 4 * BS }],
    });
    expect(await new ServeMetrics(plain).registry.metrics()).not.toContain('kvtier_prefetch_');
    await plain.close();
  });

  it('is accepted and does nothing with a policy that does not forecast (lru, arc-tree)', async () => {
    for (const policy of ['lru', 'arc-tree'] as const) {
      const d = tempDir('kvtier-whs-lru-');
      dirs.push(d);
      const w = await Warehouse.open({
        blockBytes: BS,
        tiers: [
          { kind: 'host', bytes: 2 * BS },
          { kind: 'file', dir: d.path, bytes: 8 * BS },
        ],
        policy,
        predictivePrefetch: { bytesPerSecond: 1e9, intervalMs: 1 },
      });
      const keys = chain(4, policy);
      await w.put(keys, randomBytes(4 * BS));
      const p = w.stats().predictivePrefetch!;
      expect(p.active).toBe(false);
      expect(p.reason).toContain(policy);
      expect(p.ticks).toBe(0);
      expect(p.tiers.map((t) => t.staged)).toEqual([0, 0]);
      await w.close();
    }
  });

  it('says it is inactive under tenancy (the quota wrapper does not forecast)', async () => {
    const w = await Warehouse.open({
      blockBytes: BS,
      tiers: [{ kind: 'host', bytes: 4 * BS }],
      policy: 'return-time',
      predictivePrefetch: { bytesPerSecond: 1e9, intervalMs: 1 },
      tenancy: { blockTokens: 4, secret: Buffer.alloc(32, 7), tenants: [{ name: 'a' }] },
    });
    const p = w.stats().predictivePrefetch!;
    expect(p.active).toBe(false);
    expect(p.reason).toMatch(/does not forecast/);
    await w.close();
  });

  it('refuses bad option values with KVTIER_BAD_ARGUMENT, opening nothing', async () => {
    const d = tempDir('kvtier-whs-bad-');
    dirs.push(d);
    const base = {
      blockBytes: BS,
      tiers: [
        { kind: 'host' as const, bytes: 4 * BS },
        { kind: 'file' as const, dir: d.path, bytes: 8 * BS },
      ],
    };
    const bad: unknown[] = [
      null,
      5,
      {},
      { bytesPerSecond: 0 },
      { bytesPerSecond: -1 },
      { bytesPerSecond: Infinity },
      { bytesPerSecond: NaN },
      { bytesPerSecond: '1000' },
      { bytesPerSecond: 1000, intervalMs: 0 },
      { bytesPerSecond: 1000, intervalMs: 1.5 },
      { bytesPerSecond: 1000, intervalMs: 2 ** 31 },
    ];
    for (const predictivePrefetch of bad) {
      const e = await Warehouse.open({
        ...base,
        predictivePrefetch,
      } as unknown as WarehouseOptions).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(isKvtierError(e, 'KVTIER_BAD_ARGUMENT'), String(predictivePrefetch)).toBe(true);
    }
    // Nothing was opened: the directory is free for a warehouse that opens.
    const w = await Warehouse.open({
      ...base,
      policy: 'return-time',
      predictivePrefetch: { bytesPerSecond: 1 },
    });
    expect(w.stats().predictivePrefetch!.active).toBe(true);
    await w.close();
  });
});
