/**
 * The placement executor on its own (no Warehouse): plans made here, bytes moved by real engines
 * into host tiers, the index and change feed checked after each outcome.
 */
import { afterEach, describe, expect, it } from 'vitest';

import { createEngine, type IoEngine } from '../../lib/core/engine.js';
import { KvtierError } from '../../lib/core/errors.js';
import { openFile, type KvFile } from '../../lib/core/file.js';
import { InFlight } from '../../lib/core/inflight.js';
import { native } from '../../lib/core/native.js';
import type { Key } from '../../lib/keys/keys.js';
import { LruPolicy } from '../../lib/policy/lru.js';
import { ABSENT, BlockIndex } from '../../lib/warehouse/block-index.js';
import { ChangeFeed } from '../../lib/warehouse/changes.js';
import { HostTier } from '../../lib/warehouse/host-tier.js';
import { KeyLocks } from '../../lib/warehouse/key-locks.js';
import { failureOf, Placement, type Placing } from '../../lib/warehouse/placement.js';
import { StatsBook } from '../../lib/warehouse/stats.js';
import type { SlotBlock, SlotPlace, Tier } from '../../lib/warehouse/tier.js';
import type { TransferBatch } from '../../lib/core/engine.js';

const BS = 4096;
const open: { close(): Promise<void> }[] = [];

afterEach(async () => {
  await Promise.allSettled(open.splice(0).map((x) => x.close()));
});

interface Rig {
  placement: Placement;
  index: BlockIndex<Key>;
  tiers: Tier[];
  stats: StatsBook;
  feed: ChangeFeed;
  locks: KeyLocks;
}

function rig(tiers: Tier[], wrap?: (engine: IoEngine) => IoEngine): Rig {
  const realMemoryEngine: IoEngine = createEngine({ kind: 'threads', queueDepth: 2 });
  const memoryEngine = wrap ? wrap(realMemoryEngine) : realMemoryEngine;
  const fileEngine: IoEngine = createEngine({ kind: 'threads', queueDepth: 2 });
  open.push(realMemoryEngine, fileEngine, ...tiers);
  const index = new BlockIndex<Key>(
    tiers.map((t) => ({ name: t.name, capacity: t.slots, policy: new LruPolicy<Key>() })),
  );
  const stats = new StatsBook(tiers.length);
  const feed = new ChangeFeed(index);
  const locks = new KeyLocks();
  const placement = new Placement({
    index,
    tiers,
    memoryEngine,
    fileEngine,
    gpuCopy: undefined,
    stats,
    feed,
    locks,
    inflight: new InFlight(),
    now: () => 0,
  });
  return { placement, index, tiers, stats, feed, locks };
}

function blocks(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n * BS);
  for (let i = 0; i < b.length; i++) b[i] = (i * 31 + seed * 7) & 0xff;
  return b;
}

function placing(r: Rig, key: Key, src: Buffer, i: number, tier = 0): Placing {
  const plan = r.index.plan(key, tier, r.placement.info(0, i, 1));
  expect(plan, key).toBeDefined();
  const from: SlotPlace = { kind: 'memory', target: src, offset: i * BS };
  return { plan: plan!, from, length: BS, priority: 0, depth: i, chain: 1 };
}

function slotBytes(tier: HostTier, slot: number): Buffer {
  return Buffer.from(tier.region.view(slot * BS, BS));
}

const crc = (b: Uint8Array): number => native().crc32c(b);

/** A host tier that keeps headers: records each header write as the slots it describes. */
class DescribedTier extends HostTier {
  readonly written: number[][] = [];
  describe(_batch: TransferBatch, blocks: readonly SlotBlock[]): void {
    this.written.push(blocks.map((b) => b.slot).sort((x, y) => x - y));
  }
}

/** Holds the engine's second submission until `open()`: a put still moving its bytes. */
function gated(): { wrap: (e: IoEngine) => IoEngine; open: () => void } {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  let calls = 0;
  const wrap = (e: IoEngine): IoEngine =>
    ({
      submit: async (batch: TransferBatch) => {
        if (++calls === 2) await gate;
        return e.submit(batch);
      },
    }) as unknown as IoEngine;
  return { wrap, open };
}

describe('Placement', () => {
  it('commits: bytes in the slots, checksums in the index, keys reported added', async () => {
    const host = new HostTier('host', 4, BS);
    const r = rig([host]);
    const added: Key[] = [];
    r.feed.watch((a) => added.push(...a));
    const src = blocks(2, 1);
    const items = [placing(r, 'a', src, 0), placing(r, 'b', src, 1)];
    const batch = await r.placement.run(items, { headers: 'later', added: true });
    expect(batch.committed.map((p) => p.plan.key)).toEqual(['a', 'b']);
    expect(batch.failed.size).toBe(0);
    for (const [i, key] of ['a', 'b'].entries()) {
      const e = r.index.get(key)!;
      const bytes = src.subarray(i * BS, (i + 1) * BS);
      expect(e.checksum).toBe(crc(bytes));
      expect(slotBytes(host, e.slots[0]!).equals(bytes)).toBe(true);
    }
    expect(added).toEqual(['a', 'b']);
    expect(r.index.tiers[0]!.used).toBe(2);
    expect(r.stats.tiers[0]!.bytesIn).toBe(2 * BS);
    expect(r.locks.unsettled(['a', 'b'])).toBe(false);
  });

  it("gathers the 'later' headers of concurrent runs into one write, once none is left moving bytes", async () => {
    const tier = new DescribedTier('host', 8, BS);
    const g = gated();
    const r = rig([tier], g.wrap);
    const src = blocks(4, 5);
    const first = r.placement.run([placing(r, 'a', src, 0), placing(r, 'b', src, 1)], {
      headers: 'later',
    });
    const second = r.placement.run([placing(r, 'c', src, 2), placing(r, 'd', src, 3)], {
      headers: 'later',
    });
    await first;
    // The first run is over and committed, but its headers wait for the second's.
    expect(r.index.get('a')).toBeDefined();
    expect(tier.written).toEqual([]);
    g.open();
    await second;
    const slots = ['a', 'b', 'c', 'd'].map((k) => r.index.get(k)!.slots[0]!);
    expect(tier.written).toEqual([slots.sort((x, y) => x - y)]);
  });

  it('drops a gathered header when its slot is forgotten, and writes the rest on syncFiles', async () => {
    const tier = new DescribedTier('host', 8, BS);
    const g = gated();
    const r = rig([tier], g.wrap);
    const src = blocks(3, 6);
    const first = r.placement.run([placing(r, 'a', src, 0), placing(r, 'b', src, 1)], {
      headers: 'later',
    });
    const second = r.placement.run([placing(r, 'c', src, 2)], { headers: 'later' });
    await first;
    const a = r.index.get('a')!.slots[0]!;
    const b = r.index.get('b')!.slots[0]!;
    // An eviction of 'a' while its header is gathered: that header must never be written.
    r.placement.dropHeader(0, a);
    expect(await r.placement.syncFiles()).toBeUndefined();
    expect(tier.written).toEqual([[b]]);
    g.open();
    await second;
    expect(tier.written).toEqual([[b], [r.index.get('c')!.slots[0]!]]);
  });

  it('aborts a block whose copy does not match its checksum: slot given back, index unchanged', async () => {
    const host = new HostTier('host', 2, BS);
    const r = rig([host]);
    const src = blocks(2, 2);
    const good = placing(r, 'good', src, 0);
    const bad = { ...placing(r, 'bad', src, 1), checksum: (crc(src.subarray(BS)) ^ 1) >>> 0 };
    const batch = await r.placement.run([good, bad], { headers: 'each' });
    expect(batch.committed.map((p) => p.plan.key)).toEqual(['good']);
    expect(batch.failures().get('bad')).toBe('io-error');
    expect(r.index.get('bad')).toBeUndefined();
    expect(r.index.tiers[0]!.used).toBe(1);
    // The slot it had is free again: two more blocks fit only if it was given back.
    expect(r.index.plan('c', 0, r.placement.info(0, 0, 1))).toBeDefined();
  });

  it('aborts every plan when the transfer round fails: slots returned, index as it was', async () => {
    const host = new HostTier('host', 2, BS);
    const r = rig([host]);
    const src = blocks(1, 3);
    // A block whose source place is outside its buffer: the round is refused as a whole.
    const ok = placing(r, 'x', src, 0);
    const outside = {
      ...placing(r, 'y', src, 0),
      from: { kind: 'memory', target: src, offset: 8 * BS } as SlotPlace,
    };
    await expect(r.placement.run([ok, outside], { headers: 'later' })).rejects.toThrow();
    expect(r.index.get('x')).toBeUndefined();
    expect(r.index.get('y')).toBeUndefined();
    expect(r.index.tiers[0]!.used).toBe(0);
    expect(r.locks.unsettled(['x', 'y'])).toBe(false);
    expect(r.index.plan('z', 0, r.placement.info(0, 0, 1))?.moves).toEqual([]);
  });

  it("reports 'no-space' when the destination's writes fail with ENOSPC, and commits nothing", async () => {
    const full: KvFile = await openFile('/dev/full', { direct: false });
    const tier: Tier = {
      kind: 'file',
      name: 'full',
      slots: 2,
      durable: false,
      place: (slot) => ({ kind: 'file', file: full, offset: slot * BS }),
      close: () => full.close(),
    };
    const r = rig([tier]);
    const src = blocks(1, 4);
    const batch = await r.placement.run([placing(r, 'k', src, 0)], { headers: 'each' });
    expect(batch.committed).toEqual([]);
    expect(batch.failures().get('k')).toBe('no-space');
    expect(batch.errors[0]?.code).toBe('KVTIER_NO_SPACE');
    expect(r.index.get('k')).toBeUndefined();
    expect(r.index.tiers[0]!.used).toBe(0);
    expect(r.stats.counters.ioErrors).toBe(1);
    expect(r.stats.tiers[0]!.ioErrors).toBe(1); // counted against the tier written to
    expect(failureOf(new KvtierError('KVTIER_IO', 'x'))).toBe('io-error');
  });

  it('finds no plan when every slot is pinned (the caller says busy), and places nothing', () => {
    const r = rig([new HostTier('host', 1, BS)]);
    const plan = r.index.plan('p', 0, r.placement.info(0, 0, 1))!;
    r.index.commit(plan, r.placement.info(0, 0, 1), { length: BS, checksum: 0 });
    r.index.pin('p');
    expect(r.index.plan('q', 0, r.placement.info(0, 0, 1))).toBeUndefined();
  });

  it('reports the keys its plans evicted from the warehouse, and moves demoted ones down', async () => {
    const top = new HostTier('top', 1, BS);
    const below = new HostTier('below', 1, BS);
    const r = rig([top, below]);
    const removed: Key[] = [];
    r.feed.watch((_, gone) => removed.push(...gone));
    const src = blocks(3, 5);
    for (const [i, key] of ['k0', 'k1', 'k2'].entries()) {
      await r.placement.run([placing(r, key, src, i)], { headers: 'later', added: true });
    }
    // k0 went to `below` when k1 came, then left entirely when k1 was demoted for k2.
    expect(removed).toEqual(['k0']);
    expect(r.index.get('k0')).toBeUndefined();
    const k1 = r.index.get('k1')!;
    expect(k1.slots[0]).toBe(ABSENT);
    expect(slotBytes(below, k1.slots[1]!).equals(src.subarray(BS, 2 * BS))).toBe(true);
    expect(r.index.get('k2')!.slots[0]).not.toBe(ABSENT);
  });

  it('claims slots for no key, then aborts what is left of a batch', async () => {
    const r = rig([new HostTier('host', 2, BS)]);
    const plan = r.index.plan('landing 0', 0, r.placement.info(0, 0, 1))!;
    const batch = await r.placement.begin([{ plan, length: BS, priority: 0, depth: 0, chain: 1 }]);
    batch.claim();
    batch.abort(); // nothing left to abort: the claim stays
    batch.release();
    expect(r.index.tiers[0]!.used).toBe(1);
    expect(r.index.get('landing 0')).toBeUndefined();
  });
});
