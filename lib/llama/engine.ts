/**
 * What the adapter needs of node-llama-cpp, written as structural types so kvtier neither
 * imports nor requires it (it is an optional peer dependency), and how to load it when a
 * command of kvtier's own needs it.
 */
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

import { KvtierError } from '../core/errors.js';

export interface LlamaModelLike {
  readonly filename?: string | undefined;
  readonly fileInfo: { readonly architectureMetadata: unknown };
}

export interface LlamaContextLike {
  readonly contextSize: number;
  readonly flashAttention: 'auto' | boolean;
  readonly kvCacheKeyType: number;
  readonly kvCacheValueType: number;
  readonly totalSequences?: number;
  readonly model: LlamaModelLike;
}

export interface LlamaSequenceLike {
  readonly context: LlamaContextLike;
  readonly contextSize: number;
  readonly contextTokens: number[];
  readonly disposed: boolean;
  clearHistory(): Promise<void>;
  eraseContextTokenRanges(ranges: { start: number; end: number }[]): Promise<void>;
  saveStateToFile(filePath: string): Promise<{ fileSize: number }>;
  loadStateFromFile(filePath: string, acceptRisk: { acceptRisk: true }): Promise<void>;
  evaluate(
    tokens: number[],
    options?: { temperature?: number },
  ): AsyncGenerator<number, void, void | number | number[]>;
}

/** node-llama-cpp, loaded on demand: KVTIER_NOT_AVAILABLE when it is not installed. */
export async function importNodeLlamaCpp(): Promise<typeof import('node-llama-cpp')> {
  try {
    return await import('node-llama-cpp');
  } catch (e) {
    throw new KvtierError(
      'KVTIER_NOT_AVAILABLE',
      'node-llama-cpp is not installed (npm i node-llama-cpp): the llama adapter needs it',
      { cause: e },
    );
  }
}

const GGML_TYPE_BYTES: Record<number, number> = { 0: 4, 1: 2, 30: 2 }; // F32, F16, BF16

/** Bytes of all layers' K and V per token, from the model's metadata and the cache types. */
export function kvBytesPerToken(context: LlamaContextLike): number {
  const m = context.model.fileInfo.architectureMetadata as {
    embedding_length?: number;
    block_count?: number;
    attention?: {
      head_count?: number | number[];
      head_count_kv?: number | number[];
      key_length?: number;
      value_length?: number;
    };
  };
  const kBytes = GGML_TYPE_BYTES[context.kvCacheKeyType];
  const vBytes = GGML_TYPE_BYTES[context.kvCacheValueType];
  if (kBytes === undefined || vBytes === undefined) {
    throw new KvtierError(
      'KVTIER_NOT_AVAILABLE',
      'the llama adapter stores f32, f16 or bf16 KV caches only (quantized caches have no fixed row size per token here)',
    );
  }
  const layers = m.block_count;
  const embd = m.embedding_length;
  const heads = m.attention?.head_count;
  const kvHeads = m.attention?.head_count_kv ?? heads;
  if (
    typeof layers !== 'number' ||
    typeof embd !== 'number' ||
    typeof heads !== 'number' ||
    typeof kvHeads !== 'number'
  ) {
    throw new KvtierError(
      'KVTIER_NOT_AVAILABLE',
      'the llama adapter needs a model with one attention shape for every layer',
    );
  }
  const kLen = m.attention?.key_length ?? embd / heads;
  const vLen = m.attention?.value_length ?? embd / heads;
  return layers * kvHeads * (kLen * kBytes + vLen * vBytes);
}

/**
 * A fingerprint of a model file: its size, its first MiB (header, metadata and tensor table) and
 * 64 KiB at 16 places through the weights. Two files with the same shape but other weights
 * differ in it; hashing gigabytes on every start would cost more than it saves.
 */
export function modelFingerprint(path: string): string {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const h = createHash('sha256').update(`size:${size}\0`);
    const chunk = Buffer.allocUnsafe(1 << 20);
    const take = (at: number, n: number): void => {
      const got = readSync(fd, chunk, 0, Math.min(n, chunk.length), at);
      h.update(chunk.subarray(0, got));
    };
    take(0, 1 << 20);
    for (let i = 1; i <= 16; i++) take(Math.max(0, Math.floor((size * i) / 17) - 32768), 65536);
    take(Math.max(0, size - 65536), 65536);
    return h.digest('hex');
  } finally {
    closeSync(fd);
  }
}
