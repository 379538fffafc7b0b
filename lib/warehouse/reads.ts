/**
 * Reading blocks out: get reads the local copies (each verified against its CRC-32C; a copy that
 * fails is dropped and the next lower copy tried), then fills the misses from the sources, keeps
 * what they delivered, and promotes what lower tiers served into the top tier.
 */
import type { Target } from '../core/engine.js';
import { abortError } from '../core/errors.js';
import type { Key } from '../keys/keys.js';
import { ABSENT } from './block-index.js';
import type { CallContext } from './calls.js';
import type { Parts } from './configure.js';
import { TransferRound } from './transfers.js';
import type { GetOptions, GetResult } from './types.js';
import { storeBlocks } from './writes.js';

export async function getNow(
  parts: Parts,
  keys: Key[],
  dst: Target,
  options: GetOptions,
  call?: CallContext,
): Promise<GetResult> {
  const { locks, index, placement, stats } = parts;
  while (locks.unsettled(keys)) await locks.settle(keys);
  const n = keys.length;
  const found = new Array<boolean>(n).fill(false);
  const tiers = new Array<number>(n).fill(ABSENT);
  const pinned: Key[] = [];
  stats.counters.gets++;
  try {
    // Who holds what: one policy touch per key, then reads until every key is served or lost.
    let pending: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = index.access(keys[i]!, placement.info(0, i, n, call));
      if (t === ABSENT) continue;
      index.pin(keys[i]!);
      pinned.push(keys[i]!);
      tiers[i] = t;
      pending.push(i);
    }
    while (pending.length > 0) pending = await readLocal(parts, keys, dst, pending, found, tiers);
    if (options.signal?.aborted) throw abortError(options.signal);
    const promote = options.promote ?? parts.promote;
    const remote = options.remote !== false;
    // No await at all for a warehouse without sources (the common case).
    const fetched = parts.sources.any(remote)
      ? (await parts.sources.fill(keys, dst, found, tiers, options.signal, remote)).fetched
      : [];
    // What the sources delivered is kept (as a put would), unless promotion is off.
    if (promote && fetched.length > 0) {
      const fetchedKeys = fetched.map((i) => keys[i]!);
      while (locks.unsettled(fetchedKeys)) await locks.settle(fetchedKeys);
      const fresh = fetched.filter((i) => !index.get(keys[i]!));
      if (fresh.length > 0) {
        await storeBlocks(parts, keys, fresh, dst, 0, parts.writeThrough, undefined, call);
      }
    }
    if (promote) await promoteFrom(parts, keys, dst, tiers, found, call);
  } finally {
    for (const k of pinned) index.unpin(k);
  }
  let count = 0;
  for (const f of found) if (f) count++;
  let prefix = 0;
  while (prefix < n && found[prefix]) prefix++;
  stats.counters.hits += count;
  stats.counters.misses += n - count;
  return { found, count, prefix, tiers: tiers.map((t, i) => (found[i] ? t : ABSENT)) };
}

/**
 * One round of local reads of the `pending` keys into dst (block i at i*blockBytes). Returns the
 * keys to read again from a lower copy, after a copy failed its checksum or could not be read.
 */
async function readLocal(
  parts: Parts,
  keys: readonly Key[],
  dst: Target,
  pending: readonly number[],
  found: boolean[],
  tiers: number[],
): Promise<number[]> {
  const { index, placement, stats, feed, blockBytes: bs } = parts;
  // What each read expects, fixed when it is issued: another get may drop or replace the entry
  // while this one is in flight.
  const expected: { slot: number; length: number; checksum: number }[] = [];
  const round = new TransferRound();
  const at: number[] = [];
  const reading: number[] = [];
  for (const i of pending) {
    const e = index.get(keys[i]!);
    const t = tiers[i]!;
    if (!e || e.slots[t] === ABSENT) {
      tiers[i] = ABSENT; // dropped meanwhile by another reader that found it corrupt
      continue;
    }
    expected[i] = { slot: e.slots[t]!, length: e.length, checksum: e.checksum };
    reading.push(i);
    at.push(
      round.move(
        placement.place(t, e.slots[t]!),
        { kind: 'memory', target: dst, offset: i * bs },
        e.length,
        true,
      ),
    );
  }
  const outcomes = await placement.runRound(round);
  const retry: number[] = [];
  reading.forEach((i, j) => {
    const o = outcomes[at[j]!]!;
    const key = keys[i]!;
    const want = expected[i]!;
    const t = tiers[i]!;
    // Out of an encoding tier the stored bytes' CRC was checked (intact); what they decode to
    // is the block from now on, since no other copy is left (reads go to the top copy).
    if (o.ok && o.bytes === want.length && (o.intact ?? o.checksum === want.checksum)) {
      found[i] = true;
      stats.tiers[t]!.bytesOut += want.length;
      parts.staging?.read(key, t);
      if (o.intact && o.checksum !== undefined && index.get(key)?.slots[t] === want.slot) {
        index.setChecksum(key, o.checksum);
      }
      return;
    }
    // Corrupt, torn or unreadable: this copy is gone; a lower copy may still serve.
    if (o.ok) stats.corrupt(t);
    else stats.ioError(t);
    // Drop exactly the copy that failed, if the index still points there.
    if (index.get(key)?.slots[t] === want.slot) {
      index.remove(key, t);
      if (!index.get(key)) feed.changed([], [key]);
    }
    const next = index.topTier(key);
    const e = index.get(key);
    if (next !== ABSENT && !(next === t && e?.slots[t] === want.slot)) {
      tiers[i] = next;
      retry.push(i);
    } else {
      tiers[i] = ABSENT;
    }
  });
  return retry;
}

/** Copies blocks just read from a lower tier into the top tier, from the verified dst bytes. */
async function promoteFrom(
  parts: Parts,
  keys: readonly Key[],
  dst: Target,
  tiers: readonly number[],
  found: readonly boolean[],
  call: CallContext | undefined,
): Promise<void> {
  const items: { key: Key; from: { kind: 'memory'; target: Target; offset: number } }[] = [];
  for (let i = 0; i < keys.length; i++) {
    const local = tiers[i]! > 0 && tiers[i]! < parts.tiers.length;
    if (found[i] && local && !parts.locks.has(keys[i]!)) {
      items.push({
        key: keys[i]!,
        from: { kind: 'memory', target: dst, offset: i * parts.blockBytes },
      });
    }
  }
  if (items.length > 0) await parts.placement.copyTo(items, 0, call);
}
