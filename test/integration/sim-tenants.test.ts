/**
 * `kvtier sim --tenants`: a trace split into tenants, each within its share of every tier and
 * with its retention class. Checked against the plain replay (one tenant with all of every tier is
 * the plain replay, exactly), by reconciling counts (requests and accesses add up over tenants,
 * each tenant's tiers hold its share), and by expiry on a hand-made trace whose clock is known.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { parseSimTenants, simulateTenants } from '../../lib/apps/sim/tenants.js';
import { scanTrace } from '../../lib/apps/sim/replay.js';
import type { Trace, TraceRequest } from '../../lib/apps/sim/trace.js';

const cli = fileURLToPath(new URL('../../dist/apps/cli/main.js', import.meta.url));
const fixture = fileURLToPath(
  new URL('../fixtures/traces/conversation-head400.jsonl', import.meta.url),
);

function run(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 600_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface TenantsJson {
  requests: number;
  accesses: number;
  tenants: {
    name: string;
    requests: number;
    accesses: number;
    written: number;
    expired: number;
    hitRate: { prefix: number; any: number };
    tiers: { name: string; capacity: number }[];
  }[];
}

const base = ['sim', '--trace', fixture, '--tiers', 'host=5%,file=20%', '--policy', 'lru'];

describe('kvtier sim --tenants', () => {
  it('one tenant with all of every tier is the plain replay', () => {
    const plain = run(...base, '--json');
    const solo = run(...base, '--json', '--tenants', 'solo:share=1');
    expect(plain.status, plain.stderr).toBe(0);
    expect(solo.status, solo.stderr).toBe(0);
    const p = JSON.parse(plain.stdout) as {
      hitRate: { prefix: number; any: number };
      tiers: { capacity: number }[];
    };
    const s = JSON.parse(solo.stdout) as TenantsJson;
    expect(s.tenants).toHaveLength(1);
    expect(s.tenants[0]!.hitRate).toEqual(p.hitRate);
    expect(s.tenants[0]!.tiers.map((t) => t.capacity)).toEqual(p.tiers.map((t) => t.capacity));
  });

  it('splits the requests, each tenant within its share; the counts add up', () => {
    const plain = JSON.parse(run(...base, '--json').stdout) as { tiers: { capacity: number }[] };
    const r = run(...base, '--json', '--tenants', 'a:share=0.7:ttl=1h,b:share=0.3:ttl=5m');
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as TenantsJson;
    expect(j.requests).toBe(400);
    expect(j.tenants.map((t) => t.name)).toEqual(['a', 'b']);
    expect(j.tenants.reduce((s, t) => s + t.requests, 0)).toBe(400);
    expect(j.tenants.reduce((s, t) => s + t.accesses, 0)).toBe(j.accesses);
    // Both tenants got some of the traffic (an even split of 400 requests by hash).
    for (const t of j.tenants) expect(t.requests).toBeGreaterThan(100);
    j.tenants.forEach((t, i) => {
      const share = [0.7, 0.3][i]!;
      expect(t.tiers.map((x) => x.capacity)).toEqual(
        plain.tiers.map((x) => Math.max(1, Math.floor(x.capacity * share))),
      );
      expect(t.written).toBeGreaterThan(0);
    });
    const table = run(...base, '--tenants', 'a:share=0.7:ttl=1h,b:share=0.3:ttl=5m');
    expect(table.stdout).toMatch(/^a\s+70\.00%\s+1h\s/m);
    expect(table.stdout).toMatch(/^b\s+30\.00%\s+5m\s/m);
  });

  it('refuses a bad spec before reading the trace', () => {
    for (const [spec, message] of [
      ['a:share=0.7,b:share=0.7', /add up to 1.4/],
      ['a:share=0.5:ttl=soon', /ttl 'soon'/],
      ['a:share=0.5:quota=1', /unknown field 'quota'/],
      ['a', /needs share=/],
      ['a:share=0.5,a:share=0.5', /named twice/],
      ['a:share=0x1', /share must be above 0 and at most 1, not '0x1'/],
    ] as const) {
      const r = run('sim', '--trace', '/nonexistent', '--tenants', spec);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toMatch(/KVTIER_BAD_ARGUMENT/);
    }
    const belady = run(...base, '--policy', 'belady', '--tenants', 'a:share=1');
    expect(belady.stderr).toMatch(/--tenants does not go with --policy belady/);
  });
});

/** A trace from a list of (time, session, keys). */
function trace(reqs: [number, number, number[]][]): Trace {
  return {
    format: 'kvtier',
    path: 'memory',
    blockTokens: 1,
    keySpace: undefined,
    skipped: 0,
    async *requests(): AsyncIterable<TraceRequest> {
      for (const [time, session, keys] of reqs) {
        yield {
          time,
          keys,
          length: keys.length,
          inputTokens: 0,
          outputTokens: 0,
          priority: 0,
          session,
        };
      }
      await Promise.resolve();
    },
  };
}

describe('retention in the simulator', () => {
  it("expires a block once the trace's clock passes its last use by the ttl", async () => {
    // One session, one tenant: keys 1 and 2 used at t=0, again at 5 ms (hits), then at 100 ms
    // (after the 10 ms ttl: expired, misses), then at 105 ms (hits again).
    const t = trace([
      [0, 0, [1, 2]],
      [5, 0, [1, 2]],
      [100, 0, [1, 2]],
      [105, 0, [1, 2]],
    ]);
    const stats = await scanTrace(t);
    const run1 = async (ttl: string) =>
      (
        await simulateTenants(t, {
          tiers: [{ name: 'host', capacity: 16 }],
          policy: 'lru',
          blockTokens: 1,
          stats,
          tenants: parseSimTenants(`a:share=1:ttl=${ttl}`),
        })
      ).tenants[0]!;
    const short = await run1('10ms');
    expect(short.expired).toBe(2);
    expect(short.hitRate.any).toBe(4 / 8);
    expect(short.written).toBe(4);
    const long = await run1('1h');
    expect(long.expired).toBe(0);
    expect(long.hitRate.any).toBe(6 / 8);
  });

  it('keeps tenants apart: the same keys in two sessions of two tenants are stored twice', async () => {
    // Find two sessions that hash to different tenants of an even split.
    const specs = parseSimTenants('a:share=0.5,b:share=0.5');
    const reqs: [number, number, number[]][] = [];
    for (let s = 0; s < 16; s++) reqs.push([s, s, [1, 2, 3]]);
    const t = trace(reqs);
    const r = await simulateTenants(t, {
      tiers: [{ name: 'host', capacity: 64 }],
      policy: 'lru',
      blockTokens: 1,
      stats: await scanTrace(t),
      tenants: specs,
    });
    const [a, b] = r.tenants;
    expect(a!.requests + b!.requests).toBe(16);
    expect(a!.requests).toBeGreaterThan(0);
    expect(b!.requests).toBeGreaterThan(0);
    // Each tenant misses the three keys once (its own first request), then always hits.
    for (const x of [a!, b!]) {
      expect(x.written).toBe(3);
      expect(x.hitRate.any).toBe((x.accesses - 3) / x.accesses);
    }
  });
});
