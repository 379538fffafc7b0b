/**
 * The executor of copy plans: gathers engine blocks out of a KV pool into packed kvtier blocks, and
 * scatters them back, as one TransferBatch of copies (one native call). With a file engine's
 * memory threads the pool is host memory; with a GPU copy engine it is a DeviceRegion (an engine's
 * imported KV pool) and the packed blocks are pinned host memory or GPU memory.
 */
import { checkTarget, IoEngine, type Target, TransferBatch } from '../core/engine.js';
import { KvtierError } from '../core/errors.js';
import { DeviceRegion } from '../core/gpu/device-region.js';
import { Region } from '../core/region.js';
import { KV_SEGMENT_STRIDE, KvCopyPlan, type KvPlanOptions, planKvCopy } from './copy-plan.js';
import type { KvLayout } from './kv-layout.js';
import {
  badArgument,
  guard,
  instance,
  oneOf,
  options as readOptions,
  signal as checkSignal,
} from '../core/validate.js';

export interface KvCopyOptions extends KvPlanOptions {
  /** Byte offset of the first packed block in the packed buffer (default 0). */
  packedOffset?: number;
  signal?: AbortSignal;
}

export interface AppendOptions {
  /** Byte offset of the first packed block in the packed buffer (default 0). */
  packedOffset?: number;
  /**
   * Also compute the CRC-32C of each copy's destination on the engine thread, right after it
   * lands (BatchResult.checksums, one per descriptor, in packed order).
   */
  checksum?: boolean;
}

export interface KvCopyResult {
  /** Copy descriptors submitted (segments after coalescing). */
  descriptors: number;
  /** Bytes moved. */
  bytes: number;
}

function bad(message: string): never {
  throw new KvtierError('KVTIER_BAD_ARGUMENT', message);
}

function planOf(layoutOrPlan: KvLayout | KvCopyPlan, options: KvPlanOptions): KvCopyPlan {
  if (typeof layoutOrPlan !== 'object' || layoutOrPlan === null) {
    bad('expected a layout from describeKvLayout() or a plan from planKvCopy()');
  }
  if (options.packing !== undefined) oneOf(options.packing, 'packing', ['NHD', 'HND'] as const);
  if (guard('layout', () => layoutOrPlan instanceof KvCopyPlan)) {
    const plan = layoutOrPlan as KvCopyPlan;
    if (options.packing !== undefined && options.packing !== plan.packing) {
      bad(`the plan packs '${plan.packing}', not '${options.packing}'`);
    }
    return plan;
  }
  return planKvCopy(layoutOrPlan as KvLayout, options);
}

/** The memory a target lies in (to tell overlaps) and where in it the target starts. */
function placeOf(target: Target): { buffer: object; start: number; length: number } {
  if (target instanceof DeviceRegion)
    return { buffer: target, start: 0, length: target.byteLength };
  if (target instanceof Region) return { buffer: target, start: 0, length: target.byteLength };
  if (ArrayBuffer.isView(target)) {
    // A view of a region is that region, from where the view starts.
    const owner = Region.owning(target.buffer);
    return owner
      ? { buffer: owner.region, start: owner.base + target.byteOffset, length: target.byteLength }
      : { buffer: target.buffer, start: target.byteOffset, length: target.byteLength };
  }
  if (target instanceof ArrayBuffer) {
    const owner = Region.owning(target);
    return owner
      ? { buffer: owner.region, start: owner.base, length: target.byteLength }
      : { buffer: target, start: 0, length: target.byteLength };
  }
  return bad(
    'pool and packed buffer must be a Region, a DeviceRegion, an ArrayBufferView or an ArrayBuffer',
  );
}

function check(
  plan: KvCopyPlan,
  pool: Target,
  blocks: readonly number[],
  packed: Target,
  packedOffset: number,
): void {
  if (pool instanceof Region || pool instanceof DeviceRegion) pool.assertOpen();
  if (packed instanceof Region || packed instanceof DeviceRegion) packed.assertOpen();
  const p = placeOf(pool);
  const k = placeOf(packed);
  if (p.length < plan.layout.extent) {
    bad(`the pool has ${p.length} bytes but the layout reaches byte ${plan.layout.extent}`);
  }
  if (!Number.isSafeInteger(packedOffset) || packedOffset < 0) {
    throw badArgument('packed offset', 'a non-negative integer', packedOffset);
  }
  const need = packedOffset + blocks.length * plan.blockBytes;
  if (need > k.length) {
    bad(
      `${blocks.length} blocks of ${plan.blockBytes} bytes at offset ${packedOffset} do not fit ` +
        `a packed buffer of ${k.length} bytes`,
    );
  }
  if (
    p.buffer === k.buffer &&
    k.start + packedOffset < p.start + plan.layout.extent &&
    p.start < k.start + need
  ) {
    bad('the packed buffer overlaps the KV pool');
  }
}

function append(
  batch: TransferBatch,
  plan: KvCopyPlan,
  pool: Target,
  blocks: readonly number[],
  packed: Target,
  packedOffset: number,
  direction: 'gather' | 'scatter',
  checksum = false,
): KvCopyResult {
  check(plan, pool, blocks, packed, packedOffset);
  if (direction === 'scatter' && new Set(blocks).size !== blocks.length) {
    bad('scatter: blocks must not repeat (two copies would write one engine block)');
  }
  const triples = plan.expand(blocks, packedOffset);
  // Triples are [poolOffset, packedOffset, length]: a gather copies pool to packed.
  batch.copyRuns(
    direction === 'gather' ? packed : pool,
    direction === 'gather' ? pool : packed,
    triples,
    direction === 'gather' ? 'a-to-b' : 'b-to-a',
    { checksum },
  );
  let bytes = 0;
  for (let at = 2; at < triples.length; at += KV_SEGMENT_STRIDE) bytes += triples[at]!;
  return { descriptors: triples.length / KV_SEGMENT_STRIDE, bytes };
}

/**
 * Adds to `batch` the copies that gather engine blocks `blocks` out of `pool` into `packed`
 * (block `blocks[j]` at `packedOffset + j * blockBytes`), so they can share a batch with other
 * transfers.
 */
export function appendGather(
  batch: TransferBatch,
  layoutOrPlan: KvLayout | KvCopyPlan,
  pool: Target,
  blocks: readonly number[],
  packed: Target,
  given: KvPlanOptions & AppendOptions = {},
): KvCopyResult {
  instance(batch, 'batch', TransferBatch, 'a TransferBatch');
  const { blocks: list, options } = copyArgs(pool, blocks, packed, given);
  const plan = planOf(layoutOrPlan, options);
  const checksum = (options as AppendOptions).checksum;
  return append(batch, plan, pool, list, packed, options.packedOffset ?? 0, 'gather', checksum);
}

/** Adds to `batch` the copies that scatter packed kvtier blocks back into engine blocks. */
export function appendScatter(
  batch: TransferBatch,
  layoutOrPlan: KvLayout | KvCopyPlan,
  pool: Target,
  blocks: readonly number[],
  packed: Target,
  given: KvPlanOptions & AppendOptions = {},
): KvCopyResult {
  instance(batch, 'batch', TransferBatch, 'a TransferBatch');
  const { blocks: list, options } = copyArgs(pool, blocks, packed, given);
  const plan = planOf(layoutOrPlan, options);
  const checksum = (options as AppendOptions).checksum;
  return append(batch, plan, pool, list, packed, options.packedOffset ?? 0, 'scatter', checksum);
}

/** The caller's arguments, checked and read once: pool, blocks, packed buffer and options. */
function copyArgs(
  pool: unknown,
  blocks: unknown,
  packed: unknown,
  options: unknown,
): { blocks: number[]; options: KvCopyOptions } {
  checkTarget(pool, 'pool');
  checkTarget(packed, 'packed');
  if (!guard('blocks', () => Array.isArray(blocks))) {
    throw badArgument('blocks', 'an array of block indices', blocks);
  }
  // The plan checks each index; a copy cannot change under it (or throw from a proxy there).
  const list = guard('blocks', () => Array.from(blocks as readonly number[]));
  const o = readOptions<KvCopyOptions>(options, 'options', ['packing', 'packedOffset', 'signal']);
  checkSignal(o.signal, 'options.signal');
  return { blocks: list, options: o };
}

async function run(
  engine: IoEngine,
  layoutOrPlan: KvLayout | KvCopyPlan,
  pool: Target,
  blocks: readonly number[],
  packed: Target,
  given: KvCopyOptions,
  direction: 'gather' | 'scatter',
): Promise<KvCopyResult> {
  instance(engine, 'engine', IoEngine, 'an engine (createEngine() or createCopyEngine())');
  const { blocks: list, options } = copyArgs(pool, blocks, packed, given);
  const plan = planOf(layoutOrPlan, options);
  const batch = new TransferBatch();
  const result = append(batch, plan, pool, list, packed, options.packedOffset ?? 0, direction);
  if (batch.length === 0) return result;
  const submitted = await engine.submit(
    batch,
    options.signal === undefined ? {} : { signal: options.signal },
  );
  submitted.throwIfFailed();
  return result;
}

/**
 * Gathers engine blocks `blocks` of a host-memory KV pool into contiguous kvtier blocks in
 * `packed` (block `blocks[j]` at `packedOffset + j * blockBytes`), in one batch of copies.
 */
export function gatherBlocks(
  engine: IoEngine,
  pool: Target,
  layoutOrPlan: KvLayout | KvCopyPlan,
  blocks: readonly number[],
  packed: Target,
  options: KvCopyOptions = {},
): Promise<KvCopyResult> {
  return run(engine, layoutOrPlan, pool, blocks, packed, options, 'gather');
}

/** Scatters packed kvtier blocks back into engine blocks `blocks` of a host-memory KV pool. */
export function scatterBlocks(
  engine: IoEngine,
  pool: Target,
  layoutOrPlan: KvLayout | KvCopyPlan,
  blocks: readonly number[],
  packed: Target,
  options: KvCopyOptions = {},
): Promise<KvCopyResult> {
  return run(engine, layoutOrPlan, pool, blocks, packed, options, 'scatter');
}
