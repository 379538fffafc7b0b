/**
 * The real engine for the llama tests: node-llama-cpp's prebuilt CPU binary and a tiny random
 * model written on the spot. In CI an engine that cannot load fails the tests (installable).
 */
import { join } from 'node:path';

import type { Llama, LlamaContext, LlamaModel } from 'node-llama-cpp';

import { TINY_MODEL, writeLlamaGguf, type LlamaModelSpec } from '../../lib/llama/gguf-writer.js';
import { prerequisite } from '../helpers.js';

export const CONTEXT_SIZE = 512;

export async function loadEngine(): Promise<Llama | undefined> {
  let reason = '';
  try {
    const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
    const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
    if (prerequisite(true, '')) return llama;
  } catch (e) {
    reason = String(e);
  }
  prerequisite(false, `node-llama-cpp cannot load its CPU binary: ${reason}`, 'installable');
  return undefined;
}

export function writeModel(dir: string, name: string, spec: Partial<LlamaModelSpec> = {}): string {
  const path = join(dir, `${name}.gguf`);
  writeLlamaGguf(path, { ...TINY_MODEL, seed: 7, ...spec });
  return path;
}

export async function openContext(
  llama: Llama,
  path: string,
  options: {
    contextSize?: number;
    sequences?: number;
    flashAttention?: boolean;
    batchSize?: number;
  } = {},
): Promise<{ model: LlamaModel; context: LlamaContext }> {
  const model = await llama.loadModel({ modelPath: path });
  const context = await model.createContext({
    contextSize: options.contextSize ?? CONTEXT_SIZE,
    sequences: options.sequences ?? 2,
    threads: 1,
    ...(options.flashAttention === undefined ? {} : { flashAttention: options.flashAttention }),
    ...(options.batchSize === undefined ? {} : { batchSize: options.batchSize }),
  });
  return { model, context };
}

/** Deterministic pseudo-random token ids in [3, 320): no specials, every id a real token. */
export function tokens(seed: number, n: number): number[] {
  let s = seed >>> 0 || 1;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push(3 + (s % 317));
  }
  return out;
}
