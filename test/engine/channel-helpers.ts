/**
 * Shared by the engine channel tests: a `kvtier serve --engine-socket` child, host pools laid out
 * like an engine's (kv-first: per layer [2, blocks, tokens, heads, dim]), and byte access to one
 * engine block wherever its pieces lie.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';

import { EngineClient, HostPoolFile } from '../../lib/engine-channel/client.js';
import type { KvLayoutSpec } from '../../lib/layout/index.js';
import { randomBytes } from '../helpers.js';
import { startServe, writeToken, type ServeProcess } from '../peer/serve-process.js';

export const SHAPE = {
  numLayers: 2,
  blockTokens: 4,
  kvHeads: 2,
  headDim: 8,
  dtype: 'fp16',
} as const;
/** 2 layers × K,V × 4 tokens × 2 heads × 8 dims × 2 bytes. */
export const BLOCK_BYTES = 512;
/** Bytes of one (layer, K/V) slab of one engine block. */
const SLAB = BLOCK_BYTES / 4;

export function kvFirst(numBlocks: number): { spec: KvLayoutSpec; bytes: number } {
  const layer = 2 * numBlocks * SLAB;
  return {
    spec: {
      form: 'kv-first',
      ...SHAPE,
      numBlocks,
      layers: [{ offset: 0 }, { offset: layer }],
    },
    bytes: 2 * layer,
  };
}

/** One tensor [block, layer, kv, token, head, dim]: every block one packed run. */
export function blockMajor(numBlocks: number): { spec: KvLayoutSpec; bytes: number } {
  return {
    spec: {
      form: 'stacked',
      ...SHAPE,
      numBlocks,
      order: ['block', 'layer', 'kv', 'token', 'head', 'dim'],
      tensor: { offset: 0 },
    },
    bytes: numBlocks * BLOCK_BYTES,
  };
}

/** The bytes of engine block `b` of a pool, in the pool's own order (copied out). */
export function blockBytesOf(pool: HostPoolFile, spec: KvLayoutSpec, b: number): Buffer {
  const v = pool.view();
  if (spec.form === 'stacked')
    return Buffer.from(v.subarray(b * BLOCK_BYTES, (b + 1) * BLOCK_BYTES));
  const numBlocks = spec.numBlocks;
  const parts: Buffer[] = [];
  for (let l = 0; l < 2; l++) {
    for (let k = 0; k < 2; k++) {
      const at = l * 2 * numBlocks * SLAB + k * numBlocks * SLAB + b * SLAB;
      parts.push(Buffer.from(v.subarray(at, at + SLAB)));
    }
  }
  return Buffer.concat(parts);
}

export function randomPool(bytes: number): HostPoolFile {
  const pool = HostPoolFile.create(bytes);
  pool.view().set(randomBytes(bytes));
  return pool;
}

/** `n` distinct 32-byte keys. */
export function keys(n: number, salt = String(Math.random())): Buffer[] {
  return Array.from({ length: n }, (_, i) => createHash('sha256').update(`${salt}/${i}`).digest());
}

export async function startEngineServe(
  dir: string,
  extra: string[] = [],
  hostBytes = 1 << 20,
): Promise<{ serve: ServeProcess; socket: string }> {
  const socket = join(dir, 'engine.sock');
  const serve = await startServe({
    blockBytes: BLOCK_BYTES,
    hostBytes,
    tokenFile: writeToken(dir),
    extra: ['--engine-socket', socket, ...extra],
  });
  return { serve, socket };
}

export function connect(socket: string, name = 'test'): Promise<EngineClient> {
  return EngineClient.connect(socket, { name, timeoutMs: 20_000 });
}
