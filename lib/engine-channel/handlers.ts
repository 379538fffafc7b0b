/**
 * The operations of the engine channel (docs/engine-channel.md): each takes a request's header and
 * payload and returns the answer's fields, or throws a KvtierError that becomes an error answer.
 * Every check runs before anything is stored or written.
 */
import { KvtierError } from '../core/errors.js';
import { describeKvLayout, planKvCopy } from '../layout/index.js';
import type { KvLayoutSpec, KvPacking } from '../layout/index.js';
import type { ChannelContext, SessionState } from './context.js';
import { keysOf, type Header } from './frames.js';
import { checkCudaIpc, openGpuMemory } from './gpu-memory.js';
import { checkMemfd, openHostMemory } from './host-memory.js';
import { Pool, type PoolMemory } from './pools.js';
import { loadBlocks, saveBlocks } from './block-moves.js';
import type { CallOptions } from '../warehouse/warehouse.js';

export type Answer = Record<string, unknown>;
type Handler = (
  ctx: ChannelContext,
  s: SessionState,
  h: Header,
  payload: Buffer,
) => Answer | Promise<Answer>;

function bad(message: string): never {
  throw new KvtierError('KVTIER_BAD_ARGUMENT', message);
}

function int(v: unknown, what: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    bad(`${what} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
  }
  return v;
}

function name(v: unknown, what: string): string {
  if (typeof v !== 'string' || v === '' || v.length > 256)
    bad(`${what} must be a non-empty string`);
  return v;
}

/**
 * The request's optional `session` and `hint` (and `request`) header fields, for the Warehouse's
 * policies (docs/engine-channel.md). Without a `request`, each save or load is one request to the
 * policy, even when it reaches the Warehouse as several calls.
 */
function callOf(ctx: ChannelContext, h: Header): CallOptions {
  const call: CallOptions = {};
  for (const field of ['session', 'request'] as const) {
    const v = h[field];
    if (v === undefined) continue;
    const ok =
      typeof v === 'string'
        ? v !== '' && v.length <= 256
        : typeof v === 'number' && Number.isSafeInteger(v);
    if (!ok) bad(`${field} must be a string of 1 to 256 characters or an integer`);
    call[field] = v as string | number;
  }
  if (h.hint !== undefined) {
    if (h.hint !== 'soon' && h.hint !== 'closed') bad(`hint must be 'soon' or 'closed'`);
    call.hint = h.hint;
  }
  call.request ??= `\u0001channel-${++ctx.callSerial}`;
  return call;
}

/** The keys of a request: `n` keys of `keyBytes` each, exactly filling the payload. */
function keysIn(h: Header, payload: Buffer, n: number, max: number): string[] {
  const keyBytes = int(h.keyBytes, 'keyBytes', 16, 32);
  int(n, 'the key count', 0, max);
  if (payload.length !== n * keyBytes) {
    bad(`${n} keys of ${keyBytes} bytes need ${n * keyBytes} payload bytes, got ${payload.length}`);
  }
  return keysOf(payload, n, keyBytes);
}

function poolOf(s: SessionState, v: unknown): Pool {
  const pool = s.pools.get(name(v, 'pool'));
  if (!pool) bad(`no pool '${String(v)}' is registered on this connection`);
  return pool;
}

/** The engine block ids of a save or load: one per key, each inside the pool. */
function blocksOf(pool: Pool, v: unknown, n: number): number[] {
  if (!Array.isArray(v)) bad('blocks must be an array of engine block ids');
  if (v.length !== n) bad(`blocks lists ${v.length} ids for ${n} keys`);
  return v.map((b, j) => int(b, `blocks[${j}]`, 0, pool.numBlocks - 1));
}

function hello(ctx: ChannelContext, s: SessionState, h: Header): Answer {
  if (h.version !== 1) bad(`version must be 1, got ${JSON.stringify(h.version)}`);
  if (typeof h.name === 'string') s.name = h.name.slice(0, 128);
  const stats = ctx.warehouse.stats();
  return {
    version: 1,
    blockBytes: ctx.blockBytes,
    maxBatch: ctx.maxBatch,
    pid: process.pid,
    tiers: stats.tiers.map((t) => ({
      name: t.name,
      kind: t.kind,
      capacityBlocks: t.capacityBlocks,
    })),
  };
}

function register(ctx: ChannelContext, s: SessionState, h: Header): Answer {
  const poolName = name(h.pool, 'pool');
  if (s.pools.has(poolName)) bad(`pool '${poolName}' is already registered on this connection`);
  const memory = h.memory as Record<string, unknown> | undefined;
  if (typeof memory !== 'object' || memory === null) bad('memory must be an object');
  if (typeof h.layout !== 'object' || h.layout === null) bad('layout must be an object');
  const spec = h.layout as KvLayoutSpec & { packing?: KvPacking };
  const packing = spec.packing ?? 'NHD';
  let opened: { memory: PoolMemory; spec: KvLayoutSpec } | undefined;
  let layout;
  if (memory.kind === 'memfd') {
    const m = checkMemfd(memory);
    layout = describeKvLayout(spec);
    if (layout.extent > m.bytes) {
      bad(`the layout reaches byte ${layout.extent} but the memory holds ${m.bytes} bytes`);
    }
    checkBlockBytes(ctx, layout.blockBytes);
    opened = { memory: openHostMemory(s.pid, m), spec };
  } else if (memory.kind === 'cuda-ipc') {
    const m = checkCudaIpc(memory);
    checkBlockBytes(ctx, describeKvLayout(relativeForCheck(spec)).blockBytes);
    const gpu = openGpuMemory(spec, m);
    opened = { memory: gpu.memory, spec: gpu.absolute };
    layout = describeKvLayout(gpu.absolute);
  } else {
    bad(`memory.kind must be 'memfd' or 'cuda-ipc', got ${JSON.stringify(memory.kind)}`);
  }
  const pool = new Pool(poolName, layout, planKvCopy(layout, { packing }), opened.memory);
  try {
    ctx.registry.add(pool);
  } catch (e) {
    void pool.close();
    throw e;
  }
  s.pools.set(poolName, pool);
  ctx.log('engine-registered', {
    pid: s.pid,
    engine: s.name,
    pool: poolName,
    kind: memory.kind,
    numBlocks: layout.numBlocks,
    form: layout.form,
    segmentsPerBlock: pool.plan.segmentCount,
  });
  return { pool: poolName, numBlocks: layout.numBlocks, blockBytes: layout.blockBytes };
}

/** The block size only depends on the shape, so a copy with every offset 0 tells it. */
function relativeForCheck(spec: KvLayoutSpec): KvLayoutSpec {
  return { ...spec, form: 'stacked', tensor: { offset: 0 } };
}

function checkBlockBytes(ctx: ChannelContext, blockBytes: number): void {
  if (blockBytes !== ctx.blockBytes) {
    bad(
      `the layout packs blocks of ${blockBytes} bytes but this server's blocks are ${ctx.blockBytes}`,
    );
  }
}

async function release(ctx: ChannelContext, s: SessionState, h: Header): Promise<Answer> {
  const pool = poolOf(s, h.pool);
  s.pools.delete(pool.name);
  await ctx.registry.remove(pool);
  ctx.log('engine-released', { pid: s.pid, engine: s.name, pool: pool.name });
  return {};
}

function lookup(ctx: ChannelContext, _s: SessionState, h: Header, payload: Buffer): Answer {
  const n = int(h.n, 'n', 0);
  const keys = keysIn(h, payload, n, Number.MAX_SAFE_INTEGER);
  const call = callOf(ctx, h);
  ctx.counters.lookups++;
  const r = ctx.warehouse.lookup(keys, call);
  return { prefix: r.prefix, present: r.tiers.map((t) => t >= 0) };
}

async function save(
  ctx: ChannelContext,
  s: SessionState,
  h: Header,
  payload: Buffer,
): Promise<Answer> {
  const pool = poolOf(s, h.pool);
  const n = Array.isArray(h.blocks) ? h.blocks.length : 0;
  const keys = keysIn(h, payload, n, ctx.maxBatch);
  const blocks = blocksOf(pool, h.blocks, n);
  const priority = h.priority === undefined ? 0 : Number(h.priority);
  if (!Number.isFinite(priority)) bad('priority must be a number');
  const call = callOf(ctx, h);
  const status = await pool.use(() => saveBlocks(ctx, pool, keys, blocks, priority, call));
  let stored = 0;
  let present = 0;
  for (const st of status) {
    if (st === 'stored') stored++;
    else if (st === 'present') present++;
  }
  ctx.counters.saves++;
  ctx.counters.savedBlocks += stored;
  return { status, stored, present, rejected: n - stored - present };
}

async function load(
  ctx: ChannelContext,
  s: SessionState,
  h: Header,
  payload: Buffer,
): Promise<Answer> {
  const pool = poolOf(s, h.pool);
  const n = Array.isArray(h.blocks) ? h.blocks.length : 0;
  const keys = keysIn(h, payload, n, ctx.maxBatch);
  const blocks = blocksOf(pool, h.blocks, n);
  if (new Set(blocks).size !== n) bad('blocks must not repeat: two keys cannot fill one block');
  const call = callOf(ctx, h);
  const found = await pool.use(() => loadBlocks(ctx, pool, keys, blocks, call));
  let prefix = 0;
  while (prefix < n && found[prefix]) prefix++;
  ctx.counters.loads++;
  ctx.counters.loadedBlocks += found.filter(Boolean).length;
  return { loaded: found, prefix };
}

function pin(ctx: ChannelContext, s: SessionState, h: Header, payload: Buffer): Answer {
  const n = int(h.n, 'n', 0);
  const keys = keysIn(h, payload, n, Number.MAX_SAFE_INTEGER);
  const ttlMs = h.ttlMs === undefined ? {} : { ttlMs: Number(h.ttlMs) };
  const lease = ctx.warehouse.pin(keys, ttlMs);
  s.leases.set(lease.id, lease);
  return { lease: lease.id, expiresAt: lease.expiresAt, held: lease.keys.length };
}

function unpin(ctx: ChannelContext, s: SessionState, h: Header): Answer {
  const id = int(h.lease, 'lease', 0);
  const lease = s.leases.get(id);
  if (!lease) bad(`no lease ${id} was taken on this connection`);
  s.leases.delete(id);
  ctx.warehouse.unpin(lease);
  return {};
}

async function evict(
  ctx: ChannelContext,
  _s: SessionState,
  h: Header,
  payload: Buffer,
): Promise<Answer> {
  const n = int(h.n, 'n', 0);
  const keys = keysIn(h, payload, n, Number.MAX_SAFE_INTEGER);
  return { evicted: (await ctx.warehouse.evict(keys)).removed };
}

function stats(ctx: ChannelContext): Answer {
  return { stats: ctx.warehouse.stats(), engine: { ...ctx.counters, pools: ctx.registry.pools } };
}

export const handlers: Readonly<Record<string, Handler>> = {
  hello,
  register,
  release,
  lookup,
  save,
  load,
  pin,
  unpin,
  evict,
  stats,
};
