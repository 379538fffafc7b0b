/**
 * Issue 16, "Done when": the Warehouse runs the same policy as the simulator. A short trace is
 * replayed through `simulate()` (one tier of C blocks) and through a Warehouse (one host tier of C
 * blocks, the trace's clock injected): per request, the get of its chain and the put of the same
 * chain under one request id, with the trace's session ids, hints and priorities. The hits of
 * every request must be the same, block for block, for return-time, arc-tree and lru.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { simulate } from '../../lib/apps/sim/replay.js';
import type { Trace, TraceRequest } from '../../lib/apps/sim/trace.js';
import { Warehouse } from '../../lib/index.js';
import { blockFor, blocksFor } from '../blocks.js';

const BS = 64;
const POLICIES = ['return-time', 'arc-tree', 'lru'] as const;

interface Req {
  time: number;
  keys: number[];
  session: number;
  priority: number;
  hint?: 'soon' | 'closed';
}

/** A trace over fixed requests (inputTokens 0: one saved token per prefix hit, blockTokens 1). */
function traceOf(requests: readonly Req[]): Trace {
  return {
    format: 'kvtier',
    path: 'synthetic',
    blockTokens: 1,
    keySpace: undefined,
    skipped: 0,
    requests(): AsyncIterable<TraceRequest> {
      let i = 0;
      const next = (): Promise<IteratorResult<TraceRequest>> =>
        Promise.resolve(
          i < requests.length
            ? { value: toRequest(requests[i++]!), done: false }
            : { value: undefined, done: true },
        );
      return { [Symbol.asyncIterator]: () => ({ next }) };
    },
  };
}

function toRequest(r: Req): TraceRequest {
  return {
    time: r.time,
    keys: r.keys,
    length: r.keys.length,
    inputTokens: 0,
    outputTokens: 0,
    priority: r.priority,
    session: r.session,
    hint: r.hint,
  };
}

/** The first 400 requests of Mooncake's conversation trace (no sessions, hints or priorities). */
function fixture(): Req[] {
  const path = fileURLToPath(
    new URL('../fixtures/traces/conversation-head400.jsonl', import.meta.url),
  );
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      const j = JSON.parse(l) as { timestamp: number; hash_ids: number[] };
      return { time: j.timestamp, keys: j.hash_ids, session: -1, priority: 0 };
    });
}

/**
 * Agentic-style conversations: each turn re-reads its history and adds 1 to 3 blocks; quick turns
 * (a tool call, hint 'soon') and slow ones interleave across sessions; with `closed`, the last
 * turn says 'closed'. With `priorities`, every eighth session (its own system prompt) has
 * priority 1.
 */
function conversations(priorities: boolean, closed = false): Req[] {
  let seed = 12345;
  const rand = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000;
  const out: Req[] = [];
  let nextKey = 1000;
  for (let s = 0; s < 16; s++) {
    const high = priorities && s % 8 === 0;
    // Three shared system prompts of two blocks; the high-priority sessions have their own.
    const system = high ? [900 + 2 * s, 901 + 2 * s] : [(s % 3) * 2, (s % 3) * 2 + 1];
    let chain = [...system];
    let time = s * 7_000;
    const turns = 3 + Math.floor(rand() * 5);
    for (let t = 0; t < turns; t++) {
      const add = 1 + Math.floor(rand() * 3);
      for (let i = 0; i < add; i++) chain = [...chain, nextKey++];
      const quick = rand() < 0.5;
      const last = t === turns - 1;
      out.push({
        time,
        keys: chain,
        session: s,
        priority: high ? 1 : 0,
        ...(last && closed ? { hint: 'closed' as const } : quick ? { hint: 'soon' as const } : {}),
      });
      time += quick ? 1_000 + Math.floor(rand() * 9_000) : 60_000 + Math.floor(rand() * 240_000);
    }
  }
  // Stable: requests at the same time keep their order.
  return out
    .map((r, i) => ({ r, i }))
    .sort((a, b) => a.r.time - b.r.time || a.i - b.i)
    .map((x) => x.r);
}

interface Hits {
  /** Per request, the leading blocks found. */
  prefix: number[];
  /** Blocks found in all. */
  any: number;
  /** Blocks evicted from the tier. */
  evictions: number;
}

async function viaSimulator(
  requests: readonly Req[],
  policy: string,
  capacity: number,
  withCalls: boolean,
): Promise<Hits> {
  const prefix: number[] = [];
  const r = await simulate(traceOf(requests), {
    tiers: [{ name: 'host', capacity }],
    policy,
    blockTokens: 1,
    sessions: withCalls,
    hints: withCalls ? 'both' : 'none',
    onRequest: (_req, tokens) => prefix.push(tokens[0]!),
  });
  return { prefix, any: r.tiers[0]!.hits.any, evictions: r.tiers[0]!.evictions };
}

function keyOf(k: number): string {
  return k.toString(16).padStart(64, '0');
}

async function viaWarehouse(
  requests: readonly Req[],
  policy: string,
  capacity: number,
  withCalls: boolean,
  pinned: readonly number[] = [],
  lease = true,
): Promise<Hits & { pinnedLeft: number }> {
  let clock = 0;
  const wh = await Warehouse.open({
    blockBytes: BS,
    tiers: [{ kind: 'host', bytes: capacity * BS }],
    policy,
    now: () => clock,
  });
  try {
    const pinKeys = pinned.map(keyOf);
    if (pinKeys.length > 0) {
      expect((await wh.put(pinKeys, blocksFor(pinKeys, BS))).stored).toBe(pinKeys.length);
      if (lease) {
        expect(wh.pin(pinKeys, { ttlMs: 2_000_000_000 }).keys).toHaveLength(pinKeys.length);
      }
    }
    const prefix: number[] = [];
    let any = 0;
    let n = 0;
    for (const r of requests) {
      clock = r.time;
      const keys = r.keys.map(keyOf);
      const call = {
        request: n++,
        ...(withCalls && r.session >= 0 ? { session: `conversation-${r.session}` } : {}),
        ...(withCalls && r.hint ? { hint: r.hint } : {}),
      };
      const dst = Buffer.alloc(keys.length * BS);
      const got = await wh.get(keys, dst, call);
      // Hits are real blocks: each found one is the bytes put under its key.
      got.found.forEach((f, i) => {
        if (f) expect(dst.subarray(i * BS, (i + 1) * BS).equals(blockFor(keys[i]!, BS))).toBe(true);
      });
      prefix.push(got.prefix);
      any += got.count;
      const put = await wh.put(keys, blocksFor(keys, BS), { ...call, priority: r.priority });
      expect(put.stored + put.present).toBe(new Set(keys).size);
    }
    const evictions = wh.stats().tiers[0]!.evictions;
    return { prefix, any, evictions, pinnedLeft: wh.lookup(pinKeys).prefix };
  } finally {
    await wh.close();
  }
}

describe('the Warehouse and the simulator run the same policy', () => {
  const cases: { name: string; requests: Req[]; capacity: number; withCalls: boolean }[] = [
    {
      name: 'Mooncake fixture (400 requests)',
      requests: fixture(),
      capacity: 600,
      withCalls: false,
    },
    {
      name: 'conversations with session ids and hints',
      requests: conversations(false),
      capacity: 64,
      withCalls: true,
    },
    {
      name: 'conversations without session ids or hints',
      requests: conversations(false),
      capacity: 64,
      withCalls: false,
    },
    {
      name: 'conversations with priorities, session ids and hints',
      requests: conversations(true),
      capacity: 64,
      withCalls: true,
    },
  ];
  for (const c of cases) {
    for (const policy of POLICIES) {
      it(`${c.name}: ${policy} gives every request the same hits`, async () => {
        const sim = await viaSimulator(c.requests, policy, c.capacity, c.withCalls);
        const wh = await viaWarehouse(c.requests, policy, c.capacity, c.withCalls);
        expect(sim.prefix).toHaveLength(c.requests.length);
        // Capacity is tight enough that the trace evicts, and loose enough that it hits.
        expect(sim.any).toBeGreaterThan(0);
        expect(sim.evictions).toBeGreaterThan(0);
        expect(wh.prefix).toEqual(sim.prefix);
        expect(wh.any).toBe(sim.any);
        expect(wh.evictions).toBe(sim.evictions);
      });
    }
  }

  it('priorities change what is kept, the same way in both', async () => {
    // The same requests with and without their priorities: the hits differ (so priorities act),
    // and with them the Warehouse matches the simulator request for request.
    const ranked = conversations(true);
    const plain = ranked.map((r) => ({ ...r, priority: 0 }));
    const a = await viaWarehouse(plain, 'return-time', 64, true);
    const b = await viaWarehouse(ranked, 'return-time', 64, true);
    const sim = await viaSimulator(ranked, 'return-time', 64, true);
    expect(b.prefix).toEqual(sim.prefix);
    expect(b.prefix).not.toEqual(a.prefix);
    // The high-priority sessions hit more with their priority than without.
    const high = (h: Hits): number =>
      ranked.reduce((s, r, i) => s + (r.priority > 0 ? h.prefix[i]! : 0), 0);
    expect(high(b)).toBeGreaterThan(high(a));
  });

  it('a leased (pinned) chain stays, and the rest behaves as LRU over the capacity left', async () => {
    // The simulator has no leases; the model: with P blocks pinned that the trace never asks for,
    // LRU over C blocks evicts exactly as LRU over C - P blocks without them.
    const requests = conversations(false);
    const pinned = [50_000, 50_001, 50_002, 50_003, 50_004, 50_005];
    const model = await viaSimulator(requests, 'lru', 64 - pinned.length, true);
    const wh = await viaWarehouse(requests, 'lru', 64, true, pinned);
    expect(wh.pinnedLeft).toBe(pinned.length);
    expect(wh.prefix).toEqual(model.prefix);
    expect(wh.any).toBe(model.any);
    // Without the lease the pinned blocks are evicted like any other: the lease is what kept them.
    const unleased = await viaWarehouse(requests, 'lru', 64, true, pinned, false);
    expect(unleased.pinnedLeft).toBe(0);
    for (const policy of ['return-time', 'arc-tree']) {
      const r = await viaWarehouse(requests, policy, 64, true, pinned);
      expect(r.pinnedLeft).toBe(pinned.length);
    }
  });
});

describe("the 'closed' hint through the Warehouse", () => {
  /**
   * The simulator places a request's blocks one at a time, so a 'closed' request (its group dead
   * at once) may evict its own first new blocks for its later ones; a put places its blocks
   * together and never evicts one of its own. So 'closed' is checked here against what it means:
   * the conversation's blocks are the first to go.
   */
  async function run(hint: 'closed' | undefined): Promise<{ a: number; b: number }> {
    let clock = 0;
    const wh = await Warehouse.open({
      blockBytes: BS,
      tiers: [{ kind: 'host', bytes: 16 * BS }],
      policy: 'return-time',
      now: () => clock,
    });
    try {
      const chain = (base: number): string[] =>
        Array.from({ length: 6 }, (_, i) => keyOf(base + i));
      const [a, b, c] = [chain(100), chain(200), chain(300)];
      const turn = async (keys: string[], session: string, h?: 'closed'): Promise<void> => {
        const call = { session, request: `${session}@${clock}`, ...(h ? { hint: h } : {}) };
        await wh.get(keys, Buffer.alloc(keys.length * BS), call);
        await wh.put(keys, blocksFor(keys, BS), call);
      };
      await turn(a, 'a');
      clock = 1_000;
      await turn(b, 'b');
      clock = 2_000;
      await turn(a, 'a', hint);
      clock = 3_000;
      await turn(c, 'c');
      expect(wh.lookup(c).prefix).toBe(6);
      return {
        a: wh.lookup(a).tiers.filter((t) => t >= 0).length,
        b: wh.lookup(b).tiers.filter((t) => t >= 0).length,
      };
    } finally {
      await wh.close();
    }
  }

  it("evicts a closed conversation's blocks before another's", async () => {
    // 18 blocks into 16: two go. With the hint, both are the closed conversation's.
    expect(await run('closed')).toEqual({ a: 4, b: 6 });
    // Without it, the conversation that was just read again is kept over the older one.
    expect(await run(undefined)).toEqual({ a: 6, b: 4 });
  });
});
