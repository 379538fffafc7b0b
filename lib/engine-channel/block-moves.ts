/**
 * How a save and a load move bytes between an engine's pool and the Warehouse, fewest copies
 * first:
 * - save, pool already packed (each block one run, blocks back to back): put straight from the
 *   pool's memory;
 * - save, other host layouts: reserve host-tier slots and gather the engine blocks straight into
 *   them (the Warehouse checksums them on commit);
 * - load, blocks in the host tier: borrow their slots (lend), verify each slot's checksum, then
 *   scatter from the slot into the engine block, so nothing unverified reaches the pool;
 * - otherwise (GPU pools, blocks in lower tiers, a Warehouse that cannot take bytes in place):
 *   through a staging buffer, get verifying every block there before it is scattered.
 */
import { TransferBatch } from '../engine.js';
import { appendGather, appendScatter, gatherBlocks } from '../layout/index.js';
import type { Region } from '../region.js';
import type { ChannelContext } from './context.js';
import type { Pool } from './pools.js';
import { statusesFromPresence, statusesOf, type SaveStatus } from './put-status.js';

/** Runs of consecutive engine block ids: [first index in the request, block id, length]. */
function runsOf(blocks: readonly number[]): [number, number, number][] {
  const runs: [number, number, number][] = [];
  for (let j = 0; j < blocks.length; j++) {
    const last = runs[runs.length - 1];
    if (last && last[1] + last[2] === blocks[j]) last[2]++;
    else runs.push([j, blocks[j]!, 1]);
  }
  return runs;
}

async function putFromPool(
  ctx: ChannelContext,
  pool: Pool,
  keys: string[],
  blocks: number[],
  priority: number,
): Promise<SaveStatus[] | undefined> {
  const region = pool.memory.target as Region;
  const bs = ctx.blockBytes;
  const base = pool.plan.segments(0)[0]!.poolOffset;
  const results = await Promise.all(
    runsOf(blocks).map(([j, b, len]) =>
      ctx.warehouse
        .put(keys.slice(j, j + len), region.view(base + b * bs, len * bs), { priority })
        .then((r) => ({ j, len, r })),
    ),
  );
  const out = new Array<SaveStatus>(keys.length);
  for (const { r } of results) ctx.counters.savedInPlace += r.stored;
  for (const { j, len, r } of results) {
    const st = statusesOf(r, len);
    if (!st) return undefined;
    for (let i = 0; i < len; i++) out[j + i] = st[i]!;
  }
  return out;
}

/** Gathers into reserved host-tier slots; undefined when the Warehouse cannot take that. */
async function gatherIntoSlots(
  ctx: ChannelContext,
  pool: Pool,
  keys: string[],
  blocks: number[],
): Promise<SaveStatus[] | undefined> {
  const reservation = await ctx.warehouse.reserve(keys);
  if (!reservation) return undefined;
  const status = reservation.slots.map((s): SaveStatus => (s === 'present' ? 'present' : 'busy'));
  try {
    const batch = new TransferBatch();
    reservation.slots.forEach((slot, j) => {
      if (typeof slot === 'string') return;
      appendGather(batch, pool.plan, pool.memory.target, [blocks[j]!], slot.target, {
        packedOffset: slot.offset,
      });
    });
    if (batch.length > 0) (await ctx.engineFor(pool).submit(batch)).throwIfFailed();
  } catch (e) {
    reservation.abort();
    throw e;
  }
  const { stored } = await reservation.commit();
  for (const j of stored) status[j] = 'stored';
  ctx.counters.savedIntoSlots += stored.length;
  return status;
}

async function putThroughStaging(
  ctx: ChannelContext,
  pool: Pool,
  keys: string[],
  blocks: number[],
  priority: number,
): Promise<SaveStatus[] | undefined> {
  const n = keys.length;
  return ctx.staging.with(pool.memory.kind === 'cuda-ipc', async (staging) => {
    await gatherBlocks(ctx.engineFor(pool), pool.memory.target, pool.plan, blocks, staging);
    const r = await ctx.warehouse.put(keys, staging.view(0, n * ctx.blockBytes), { priority });
    ctx.counters.savedStaged += r.stored;
    return statusesOf(r, n);
  });
}

/** Saves engine blocks `blocks` under `keys`; a status per key. */
export async function saveBlocks(
  ctx: ChannelContext,
  pool: Pool,
  keys: string[],
  blocks: number[],
  priority: number,
): Promise<SaveStatus[]> {
  const before = ctx.warehouse.lookup(keys).tiers.map((t) => t >= 0);
  let status: SaveStatus[] | undefined;
  if (pool.packedInPlace) {
    status = await putFromPool(ctx, pool, keys, blocks, priority);
  } else if (pool.memory.kind === 'memfd' && priority === 0) {
    status = await gatherIntoSlots(ctx, pool, keys, blocks);
    status ??= await putThroughStaging(ctx, pool, keys, blocks, priority);
  } else {
    status = await putThroughStaging(ctx, pool, keys, blocks, priority);
  }
  return status ?? statusesFromPresence(before, ctx.warehouse.lookup(keys).tiers.map((t) => t >= 0));
}

/** Scatters blocks from staging (key j at j * blockBytes) for the keys `which` lists. */
async function scatterFromStaging(
  ctx: ChannelContext,
  pool: Pool,
  keys: string[],
  blocks: number[],
  which: number[],
  found: boolean[],
): Promise<void> {
  const bs = ctx.blockBytes;
  await ctx.staging.with(pool.memory.kind === 'cuda-ipc', async (staging) => {
    const got = await ctx.warehouse.get(
      which.map((j) => keys[j]!),
      staging.view(0, which.length * bs),
    );
    const batch = new TransferBatch();
    which.forEach((j, w) => {
      if (!got.found[w]) return;
      appendScatter(batch, pool.plan, pool.memory.target, [blocks[j]!], staging, {
        packedOffset: w * bs,
      });
      found[j] = true;
      ctx.counters.loadedStaged++;
    });
    if (batch.length > 0) (await ctx.engineFor(pool).submit(batch)).throwIfFailed();
  });
}

/** Loads `keys` into engine blocks `blocks`; per key, whether its block was written. */
export async function loadBlocks(
  ctx: ChannelContext,
  pool: Pool,
  keys: string[],
  blocks: number[],
): Promise<boolean[]> {
  const n = keys.length;
  const found = new Array<boolean>(n).fill(false);
  if (pool.memory.kind !== 'memfd') {
    await scatterFromStaging(ctx, pool, keys, blocks, [...keys.keys()], found);
    return found;
  }
  const engine = ctx.engineFor(pool);
  const rest = await ctx.warehouse.lend(keys, async (places) => {
    const lent: number[] = [];
    const check = new TransferBatch();
    places.forEach((p, j) => {
      if (!p) return;
      lent.push(j);
      check.checksum(p.target, p.offset, p.length);
    });
    const sums = lent.length > 0 ? await engine.submit(check) : undefined;
    const scatter = new TransferBatch();
    const misses: number[] = [];
    places.forEach((p, j) => {
      if (p) return;
      misses.push(j);
    });
    lent.forEach((j, w) => {
      const p = places[j]!;
      if (sums!.errors[w] || sums!.checksums?.[w] !== p.checksum || p.length !== ctx.blockBytes) {
        // A slot that fails its checksum goes through get, which drops the bad copy and reads a
        // lower one if there is one.
        misses.push(j);
        return;
      }
      appendScatter(scatter, pool.plan, pool.memory.target, [blocks[j]!], p.target, {
        packedOffset: p.offset,
      });
      found[j] = true;
      ctx.counters.loadedFromSlots++;
    });
    if (scatter.length > 0) (await engine.submit(scatter)).throwIfFailed();
    return misses.sort((a, b) => a - b);
  });
  if (rest.length > 0) await scatterFromStaging(ctx, pool, keys, blocks, rest, found);
  return found;
}
