/**
 * Writing blocks in and out: put (plans for the top tier, and the file tier too when writing
 * through, spilling down when a tier is full, run through the placement executor beside the
 * write-through sinks) and evict (headers forgotten on disk, then the index entries removed).
 */
import type { Target } from '../core/engine.js';
import type { Key } from '../keys/keys.js';
import { ABSENT } from './block-index.js';
import type { CallContext } from './calls.js';
import { durableTier, type Parts } from './configure.js';
import type { Placing } from './placement.js';
import { TransferRound } from './transfers.js';
import type { EvictResult, EvictStatus, PutResult, PutStatus } from './types.js';

export async function putNow(
  parts: Parts,
  keys: Key[],
  src: Target,
  priority: number,
  writeThrough: boolean,
  call?: CallContext,
): Promise<PutResult> {
  const { locks, index, sources, placement } = parts;
  while (locks.unsettled(keys)) await locks.settle(keys);
  const status = new Array<PutStatus>(keys.length);
  const result: PutResult = { stored: 0, present: 0, rejected: 0, status };
  const fresh: number[] = [];
  /** Keys already there: written again, which their policy hears of, in chain order. */
  const again: number[] = [];
  const first = new Map<Key, number>();
  const durable = durableTier(parts);
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i]!;
    if (first.has(key)) continue;
    first.set(key, i);
    const e = index.get(key);
    // Under durability 'sync' a block counts as there only once its durable copy is.
    if (e && (durable === ABSENT || e.slots[durable] !== ABSENT)) {
      result.present++;
      status[i] = 'present';
      again.push(i);
    } else {
      fresh.push(i);
    }
  }
  if (fresh.length > 0) {
    // A sink's copy (a peer) is written beside the local one; put resolves once both are done,
    // since the caller may reuse src then. A failing sink is counted, and costs only that copy.
    const placed = new Map<Key, number>();
    const [outcome] = await Promise.all([
      storeBlocks(parts, keys, fresh, src, priority, writeThrough, placed, call, again),
      sources.store(keys, fresh, src),
    ]);
    for (const i of fresh) {
      status[i] = outcome.get(keys[i]!) ?? 'busy';
      if (status[i] === 'stored') result.stored++;
      else result.rejected++;
    }
    result.tiers = keys.map((k) =>
      status[first.get(k)!] === 'stored' ? (placed.get(k) ?? ABSENT) : ABSENT,
    );
  } else {
    for (const i of again) index.rewrite(keys[i]!, placement.info(priority, i, keys.length, call));
    result.tiers = keys.map(() => ABSENT);
  }
  for (let i = 0; i < keys.length; i++) status[i] ??= status[first.get(keys[i]!)!]!;
  return result;
}

/**
 * Stores blocks `fresh` of src (block i at i*blockBytes) under their keys: a slot in the top tier
 * (and the file tier when writing through, which durability 'sync' implies) for each. Per key
 * its status; a key with neither a stored copy nor a failure found no slot (absent: 'busy').
 * `placed`, when given, receives per stored key the highest tier (lowest number) it went to.
 */
export async function storeBlocks(
  parts: Parts,
  keys: readonly Key[],
  fresh: readonly number[],
  src: Target,
  priority: number,
  writeThrough: boolean,
  placed?: Map<Key, number>,
  call?: CallContext,
  again: readonly number[] = [],
): Promise<Map<Key, PutStatus>> {
  const { index, tiers, placement, blockBytes: bs } = parts;
  const durable = durableTier(parts);
  const last = tiers.length - 1;
  const targets = (writeThrough || durable !== ABSENT) && last > 0 ? [0, last] : [0];
  const items: Placing[] = [];
  // Keys written again (`again`) and new ones, in chain order, as the simulator's replay places
  // them: each plan tells its tier's policy at once (BlockIndex.plan), so the order is theirs.
  let a = 0;
  for (const i of fresh) {
    for (; a < again.length && again[a]! < i; a++) {
      index.rewrite(keys[again[a]!]!, placement.info(priority, again[a]!, keys.length, call));
    }
    const info = placement.info(priority, i, keys.length, call);
    const e = index.get(keys[i]!);
    for (const t of targets) {
      if (e && e.slots[t] !== ABSENT) continue; // already there (a host copy awaiting its durable one)
      // A put larger than a tier's evictable room spills into the tiers below it.
      for (let at = t; at < tiers.length; at++) {
        const plan = index.plan(keys[i]!, at, info);
        if (plan) {
          const from = { kind: 'memory' as const, target: src, offset: i * bs };
          const chain = keys.length;
          items.push({ plan, from, length: bs, priority, depth: i, chain, ...(call && { call }) });
          break;
        }
        if (targets.includes(at + 1)) break;
      }
    }
  }
  for (; a < again.length; a++) {
    index.rewrite(keys[again[a]!]!, placement.info(priority, again[a]!, keys.length, call));
  }
  const sync = parts.durability === 'sync' && tiers.some((t) => t.durable);
  const batch = await placement.run(items, {
    headers: parts.durability === 'sync' ? 'together' : 'later',
    sync,
    also: fresh.map((i) => keys[i]!),
    added: true,
  });
  const status = new Map<Key, PutStatus>(batch.failures());
  for (const p of batch.committed) {
    // Under durability 'sync', only a durable copy makes a block stored.
    if (durable === ABSENT || p.plan.tier === durable) status.set(p.plan.key, 'stored');
    const top = placed?.get(p.plan.key);
    if (placed && (top === undefined || p.plan.tier < top)) placed.set(p.plan.key, p.plan.tier);
  }
  return status;
}

export async function evictNow(parts: Parts, keys: Key[]): Promise<EvictResult> {
  const { locks, index, tiers, fileEngine, feed, placement } = parts;
  while (locks.unsettled(keys)) await locks.settle(keys);
  const round = new TransferRound();
  const chosen: Key[] = [];
  for (const key of new Set(keys)) {
    const e = index.get(key);
    if (!e || e.pins > 0) continue;
    tiers.forEach((t, i) => {
      if (e.slots[i] === ABSENT || !t.forget) return;
      // A header still gathered would otherwise land after the zero one: the block back at restart.
      placement.dropHeader(i, e.slots[i]!);
      t.forget(round.file, e.slots[i]!);
    });
    chosen.push(key);
  }
  // While the headers are forgotten on disk, the blocks are pinned (no put may take their
  // slots) and held (no other operation touches them).
  for (const key of chosen) index.pin(key);
  const held = locks.hold();
  held.add(chosen);
  try {
    if (round.file.length > 0) (await fileEngine.submit(round.file)).throwIfFailed();
  } finally {
    for (const key of chosen) index.unpin(key);
    held.release();
  }
  const removed: Key[] = [];
  for (const key of chosen) {
    const e = index.get(key);
    if (!e || e.pins > 0) continue; // pinned meanwhile by a reader: it stays (until restart)
    index.remove(key);
    for (const t of index.tiers) t.stats.evictions++;
    removed.push(key);
  }
  feed.changed([], removed);
  const gone = new Set(removed);
  const status = keys.map((key): EvictStatus => {
    if (gone.has(key)) return 'removed';
    return index.get(key) ? 'pinned' : 'absent';
  });
  return { removed: removed.length, status };
}
