/**
 * How a save and a load move bytes between an engine's pool and the Warehouse, each block's bytes
 * copied once:
 * - save, pool already packed (each block one run, blocks back to back): put straight from the
 *   pool's memory;
 * - save, other host layouts: reserve host-tier slots and gather the engine blocks straight into
 *   them, each piece checksummed as it lands (the block's CRC-32C is combined from its pieces');
 * - load, blocks in the host tier: borrow their slots (lend) and scatter from them straight into
 *   the engine blocks, checksumming each piece as it lands; a block whose checksum does not match
 *   is reported not loaded unless get then finds a good copy (host memory does not tear, so this
 *   is the path of a bit flip only, and the engine recomputes such a block anyway);
 * - otherwise (GPU pools, blocks in lower tiers, a Warehouse that cannot take bytes in place):
 *   through a staging buffer, get verifying every block there before it is scattered, so a torn
 *   or corrupt block from a file never reaches the pool.
 */
import { type BatchResult, TransferBatch } from '../core/engine.js';
import { appendGather, appendScatter, gatherBlocks } from '../layout/index.js';
import type { Region } from '../core/region.js';
import type { ChannelContext } from './context.js';
import { crc32cOfPieces } from './crc-combine.js';
import type { Pool } from './pools.js';
import type { SaveStatus } from './put-status.js';
import type { CallOptions } from '../warehouse/warehouse.js';

/** Per block, the CRC of its pieces (descriptors spans[k] to spans[k + 1] of the batch). */
function blockChecksums(result: BatchResult, spans: readonly number[]): number[] {
  const out: number[] = [];
  for (let k = 0; k + 1 < spans.length; k++) {
    const from = spans[k]!;
    const to = spans[k + 1]!;
    out.push(crc32cOfPieces(result.checksums!.slice(from, to), result.bytes.slice(from, to)));
  }
  return out;
}

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
  call: CallOptions,
): Promise<SaveStatus[]> {
  const region = pool.memory.target as Region;
  const bs = ctx.blockBytes;
  const base = pool.plan.segments(0)[0]!.poolOffset;
  const results = await Promise.all(
    runsOf(blocks).map(([j, b, len]) =>
      ctx.warehouse
        .put(keys.slice(j, j + len), region.view(base + b * bs, len * bs), { ...call, priority })
        .then((r) => ({ j, len, r })),
    ),
  );
  const out = new Array<SaveStatus>(keys.length);
  for (const { r } of results) ctx.counters.savedInPlace += r.stored;
  for (const { j, len, r } of results) {
    for (let i = 0; i < len; i++) out[j + i] = r.status[i]!;
  }
  return out;
}

/** Gathers into reserved host-tier slots; undefined when the Warehouse cannot take that. */
async function gatherIntoSlots(
  ctx: ChannelContext,
  pool: Pool,
  keys: string[],
  blocks: number[],
  call: CallOptions,
): Promise<SaveStatus[] | undefined> {
  const reservation = await ctx.warehouse.hostSlots.reserve(keys, 0, call);
  if (!reservation) return undefined;
  const status = reservation.slots.map((s): SaveStatus => (s === 'present' ? 'present' : 'busy'));
  let checksums: number[];
  try {
    // Each piece's CRC is taken as it lands; the block's comes from its pieces', so the
    // Warehouse need not read the slots again.
    const batch = new TransferBatch();
    const spans: number[] = [];
    reservation.slots.forEach((slot, j) => {
      if (typeof slot === 'string') return;
      spans.push(batch.length);
      appendGather(batch, pool.plan, pool.memory.target, [blocks[j]!], slot.target, {
        packedOffset: slot.offset,
        checksum: true,
      });
    });
    spans.push(batch.length);
    checksums = [];
    if (batch.length > 0) {
      const result = await ctx.engineFor(pool).submit(batch);
      result.throwIfFailed();
      checksums = blockChecksums(result, spans);
    }
  } catch (e) {
    reservation.abort();
    throw e;
  }
  const { stored } = await reservation.commit(checksums);
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
  call: CallOptions,
): Promise<SaveStatus[]> {
  const n = keys.length;
  return ctx.staging.with(pool.memory.kind === 'cuda-ipc', async (staging) => {
    await gatherBlocks(ctx.engineFor(pool), pool.memory.target, pool.plan, blocks, staging);
    const r = await ctx.warehouse.put(keys, staging.view(0, n * ctx.blockBytes), {
      ...call,
      priority,
    });
    ctx.counters.savedStaged += r.stored;
    return r.status;
  });
}

/**
 * Saves engine blocks `blocks` under `keys`; a status per key. `call`: the request's session, hint
 * and request id, passed to the Warehouse for its policies.
 */
export async function saveBlocks(
  ctx: ChannelContext,
  pool: Pool,
  keys: string[],
  blocks: number[],
  priority: number,
  call: CallOptions = {},
): Promise<SaveStatus[]> {
  if (pool.packedInPlace) return putFromPool(ctx, pool, keys, blocks, priority, call);
  if (pool.memory.kind === 'memfd' && priority === 0) {
    const status = await gatherIntoSlots(ctx, pool, keys, blocks, call);
    if (status) return status;
  }
  return putThroughStaging(ctx, pool, keys, blocks, priority, call);
}

/** Scatters blocks from staging (key j at j * blockBytes) for the keys `which` lists. */
async function scatterFromStaging(
  ctx: ChannelContext,
  pool: Pool,
  keys: string[],
  blocks: number[],
  which: number[],
  found: boolean[],
  call: CallOptions,
): Promise<void> {
  const bs = ctx.blockBytes;
  await ctx.staging.with(pool.memory.kind === 'cuda-ipc', async (staging) => {
    const got = await ctx.warehouse.get(
      which.map((j) => keys[j]!),
      staging.view(0, which.length * bs),
      call,
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
  call: CallOptions = {},
): Promise<boolean[]> {
  const n = keys.length;
  const found = new Array<boolean>(n).fill(false);
  if (pool.memory.kind !== 'memfd') {
    await scatterFromStaging(ctx, pool, keys, blocks, [...keys.keys()], found, call);
    return found;
  }
  const engine = ctx.engineFor(pool);
  const rest = await ctx.warehouse.hostSlots.lend(
    keys,
    async (places) => {
      // Scattered straight from the host-tier slots, each piece's CRC taken as it lands in the
      // pool; a block whose pieces do not add up to its checksum is reported not loaded and
      // fetched again through get (which drops the bad copy and verifies before it scatters).
      const misses: number[] = [];
      const lent: number[] = [];
      const spans: number[] = [];
      const scatter = new TransferBatch();
      places.forEach((p, j) => {
        if (!p || p.length !== ctx.blockBytes) {
          misses.push(j);
          return;
        }
        lent.push(j);
        spans.push(scatter.length);
        appendScatter(scatter, pool.plan, pool.memory.target, [blocks[j]!], p.target, {
          packedOffset: p.offset,
          checksum: true,
        });
      });
      spans.push(scatter.length);
      if (scatter.length === 0) return misses;
      const result = await engine.submit(scatter);
      const sums = blockChecksums(result, spans);
      lent.forEach((j, k) => {
        const failed = result.errors.slice(spans[k], spans[k + 1]).some((e) => e !== undefined);
        if (failed || sums[k] !== places[j]!.checksum) {
          misses.push(j);
          return;
        }
        found[j] = true;
        ctx.counters.loadedFromSlots++;
      });
      return misses.sort((a, b) => a - b);
    },
    call,
  );
  if (rest.length > 0) await scatterFromStaging(ctx, pool, keys, blocks, rest, found, call);
  return found;
}
