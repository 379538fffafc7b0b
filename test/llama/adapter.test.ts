/**
 * kvtier as node-llama-cpp's KV store, on the real engine (its prebuilt CPU binary) with a tiny
 * random model: a continuation after restore is the one after full prefill, shared prefixes are
 * stored once, a corrupt or missing block is recomputed, and a second process finds the blocks.
 */
import { execFile } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';

import type { LlamaContext, LlamaContextSequence, LlamaModel, Token } from 'node-llama-cpp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { isKvtierError } from '../../lib/core/errors.js';
import { LlamaKvCache } from '../../lib/llama/adapter.js';
import { cutBlocks, parseSeqState } from '../../lib/llama/state-format.js';
import { Warehouse } from '../../lib/warehouse/warehouse.js';
import { tempDir } from '../helpers.js';
import { CONTEXT_SIZE, loadEngine, openContext, tokens, writeModel } from './engine.js';

const llama = await loadEngine();
const B = 16;
const MiB = 1 << 20;
const CHILD = fileURLToPath(new URL('./child.mjs', import.meta.url));

const S = tokens(1, 150); // a system prompt every session shares
const P1 = [...S, ...tokens(2, 40)];
const P2 = [...S, ...tokens(3, 57)];
const P3 = [...P1, ...tokens(4, 30)];

interface Baseline {
  tokens: number[];
  probs: Map<number, number>;
}

/** Greedy continuation and first-token distribution after a full prefill, no kvtier involved. */
async function fullPrefill(seq: LlamaContextSequence, prompt: number[], n: number) {
  await seq.clearHistory();
  const out: Baseline = { tokens: [], probs: new Map() };
  for await (const m of seq.evaluateWithMetadata(
    prompt as Token[],
    { probabilities: true },
    { temperature: 0 },
  )) {
    if (out.tokens.length === 0) out.probs = m.probabilities;
    out.tokens.push(m.token);
    if (out.tokens.length >= n) break;
  }
  await seq.clearHistory();
  return out;
}

/** Restores through kvtier, then continues the same way. */
async function afterRestore(
  kv: LlamaKvCache,
  seq: LlamaContextSequence,
  prompt: number[],
  n: number,
) {
  const restore = await kv.restore(seq, prompt);
  const out: Baseline = { tokens: [], probs: new Map() };
  for await (const m of seq.evaluateWithMetadata(
    restore.rest as Token[],
    { probabilities: true },
    { temperature: 0 },
  )) {
    if (out.tokens.length === 0) out.probs = m.probabilities;
    out.tokens.push(m.token);
    if (out.tokens.length >= n) break;
  }
  return { restore, ...out };
}

function expectSameLogits(a: Map<number, number>, b: Map<number, number>): void {
  expect(a.size).toBeGreaterThan(0);
  expect(b.size).toBe(a.size);
  let worst = 0;
  for (const [tok, p] of a) worst = Math.max(worst, Math.abs(p - (b.get(tok) ?? -1)));
  // Batches split differently sum in another order: the engine's own noise is ~1e-5.
  expect(worst).toBeLessThan(1e-3);
}

describe.skipIf(!llama)('llama adapter on the real engine', () => {
  const dir = tempDir('kvtier-llama-');
  let modelPath = '';
  let model: LlamaModel;
  let context: LlamaContext;
  let base: LlamaContextSequence;
  let seq: LlamaContextSequence;
  const baselines = new Map<number[], Baseline>();

  beforeAll(async () => {
    modelPath = writeModel(dir.path, 'tiny');
    ({ model, context } = await openContext(llama!, modelPath));
    base = context.getSequence();
    seq = context.getSequence();
    for (const p of [P1, P2, P3]) baselines.set(p, await fullPrefill(base, p, 6));
  }, 120_000);

  afterAll(async () => {
    await context?.dispose();
    await model?.dispose();
    dir.remove();
  });

  it('continues after a restore exactly as after full prefill; shared prefixes are stored once; a second process reads them from the file tier', async () => {
    const fileDir = join(dir.path, 'tier');
    const kv = await LlamaKvCache.open(context, {
      blockTokens: B,
      tiers: [
        { kind: 'host', bytes: 4 * MiB },
        { kind: 'file', dir: fileDir, bytes: 8 * MiB },
      ],
      warehouse: { writeThrough: true },
    });
    try {
      // Session 1: nothing cached, everything prefilled, then stored.
      const r1 = await kv.generate(seq, P1, { maxTokens: 6 });
      expect(r1.restore.restoredTokens).toBe(0);
      expect(r1.tokens).toEqual(baselines.get(P1)!.tokens);
      // The sequence holds P1 and 5 generated tokens: 195 tokens, 12 whole blocks.
      expect(r1.store).toMatchObject({ blocks: 12, stored: 12, present: 0, rejected: 0 });
      expect(kv.stateLayout?.layers).toHaveLength(2);

      // Session 2 shares the system prompt: its 9 whole blocks come back, the rest is prefilled.
      await seq.clearHistory();
      const r2 = await afterRestore(kv, seq, P2, 6);
      expect(r2.restore.source).toBe('warehouse');
      expect(r2.restore.restoredTokens).toBe(144);
      expect(r2.restore.staging.bytes).toBeGreaterThan(144 * 256);
      expect(r2.tokens).toEqual(baselines.get(P2)!.tokens);
      expectSameLogits(baselines.get(P2)!.probs, r2.probs);
      const s2 = await kv.store(seq);
      // 207 + 5 tokens: 13 blocks, the first 9 already there (the shared prefix, stored once).
      expect(s2).toMatchObject({ blocks: 13, stored: 4, present: 9, rejected: 0 });
      expect(kv.warehouse.keys()).toHaveLength(1 + 12 + 4); // layout record + blocks

      // Session 3 extends session 1: all of P1's whole blocks (176 tokens) come back.
      await seq.clearHistory();
      const r3 = await afterRestore(kv, seq, P3, 6);
      expect(r3.restore.restoredTokens).toBe(176);
      expect(r3.tokens).toEqual(baselines.get(P3)!.tokens);
      expectSameLogits(baselines.get(P3)!.probs, r3.probs);

      // A sequence that already holds the prompt's prefix keeps it rather than reloading.
      await seq.clearHistory();
      await seq.evaluateWithoutGeneratingNewTokens(P1 as Token[]);
      const r4 = await kv.generate(seq, P3, { maxTokens: 6, store: false });
      expect(r4.restore.source).toBe('sequence');
      expect(r4.restore.restoredTokens).toBe(P1.length);
      expect(r4.tokens).toEqual(baselines.get(P3)!.tokens);
      expect(kv.stats()).toMatchObject({ restoreFailures: 0, unstorable: 0 });
    } finally {
      await kv.close();
    }

    // Another process, the file tier only: it finds session 1's blocks on disk.
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [
        CHILD,
        JSON.stringify({
          model: modelPath,
          dir: fileDir,
          fileBytes: 8 * MiB,
          blockTokens: B,
          contextSize: CONTEXT_SIZE,
          prompt: P2,
          maxTokens: 6,
        }),
      ],
      { timeout: 120_000 },
    );
    const child = JSON.parse(stdout.trim().split('\n').pop()!) as {
      restoredTokens: number;
      source: string;
      tiers: number[];
      tokens: number[];
    };
    expect(child.source).toBe('warehouse');
    // All of P2's whole blocks (session 2 stored them; the 13th also holds generated tokens).
    expect(child.restoredTokens).toBe(Math.floor(P2.length / B) * B);
    expect(child.tiers.every((t) => t === 0)).toBe(true);
    expect(child.tokens).toEqual(baselines.get(P2)!.tokens);
  }, 180_000);

  it('recomputes from a missing or corrupt block on, never continuing on wrong state', async () => {
    const fileDir = join(dir.path, 'corrupt');
    const kv = await LlamaKvCache.open(context, {
      blockTokens: B,
      tiers: [{ kind: 'file', dir: fileDir, bytes: 8 * MiB }],
      warehouse: { promote: false },
    });
    try {
      await seq.clearHistory();
      await kv.generate(seq, P1, { maxTokens: 6 });
      const keys = kv.keysOf(P1);

      // Missing: block 1 evicted, so only block 0 comes back.
      expect((await kv.warehouse.evict([keys[1]!])).removed).toBe(1);
      await seq.clearHistory();
      const missing = await afterRestore(kv, seq, P1, 6);
      expect(missing.restore.restoredTokens).toBe(B);
      expect(missing.tokens).toEqual(baselines.get(P1)!.tokens);
      const refill = await kv.store(seq);
      expect(refill.stored).toBeGreaterThanOrEqual(1);

      // Corrupt: flip bytes of block 3 where it lies in the file tier.
      const state = join(dir.path, 'p1.state');
      await seq.saveStateToFile(state);
      const block = Buffer.alloc(kv.blockBytes);
      cutBlocks(parseSeqState(readFileSync(state)), 3, 1, B, block);
      const blocksFile = join(fileDir, 'blocks.kvt');
      const at = readFileSync(blocksFile).indexOf(block.subarray(0, 512));
      expect(at).toBeGreaterThan(0);
      const fd = openSync(blocksFile, 'r+');
      writeSync(fd, Buffer.alloc(64, 0x5a), 0, 64, at + 128);
      closeSync(fd);

      await seq.clearHistory();
      const corrupt = await afterRestore(kv, seq, P1, 6);
      expect(corrupt.restore.restoredTokens).toBe(3 * B);
      expect(kv.warehouse.stats().corrupt).toBeGreaterThanOrEqual(1);
      expect(corrupt.tokens).toEqual(baselines.get(P1)!.tokens);
      expectSameLogits(baselines.get(P1)!.probs, corrupt.probs);
    } finally {
      await kv.close();
    }
  }, 120_000);

  it('stores and rebuilds the transposed-V state (flash attention off)', async () => {
    const other = await openContext(llama!, modelPath, { flashAttention: false });
    const kv = await LlamaKvCache.open(other.context, {
      blockTokens: B,
      tiers: [{ kind: 'host', bytes: 4 * MiB }],
    });
    try {
      const s = other.context.getSequence();
      const b = other.context.getSequence();
      const want = await fullPrefill(b, P2, 6);
      await kv.generate(s, P1, { maxTokens: 2 });
      expect(kv.stateLayout?.vTrans).toBe(true);
      await s.clearHistory();
      const r = await afterRestore(kv, s, P2, 6);
      expect(r.restore.restoredTokens).toBe(144);
      expect(r.tokens).toEqual(want.tokens);
      expectSameLogits(want.probs, r.probs);
    } finally {
      await kv.close();
      await other.context.dispose();
    }
  }, 120_000);

  it('bad input: another model or context size, a prompt past the context, a busy sequence', async () => {
    const host = { kind: 'host' as const, bytes: 4 * MiB };
    const kv = await LlamaKvCache.open(context, { blockTokens: B, tiers: [host] });
    const otherPath = writeModel(dir.path, 'other', { seed: 99 });
    const other = await openContext(llama!, otherPath, { contextSize: 256 });
    const wide = await openContext(llama!, writeModel(dir.path, 'wide', { embd: 128 }));
    try {
      await seq.clearHistory();
      await kv.generate(seq, P1, { maxTokens: 2 });
      const before = kv.warehouse.keys().sort();

      // A warehouse sized for another model's blocks is refused.
      let err: unknown;
      try {
        new LlamaKvCache(wide.context, kv.warehouse, { blockTokens: B });
      } catch (e) {
        err = e;
      }
      expect(isKvtierError(err, 'KVTIER_BAD_ARGUMENT')).toBe(true);

      // Same shape, other weights and context size: another namespace, so nothing restores.
      const kvOther = new LlamaKvCache(other.context, kv.warehouse, { blockTokens: B });
      expect(kvOther.namespace).not.toBe(kv.namespace);
      const os = other.context.getSequence();
      const r = await kvOther.restore(os, P1);
      expect(r.restoredTokens).toBe(0);
      // A sequence of another context is refused.
      await expect(kv.restore(os, P1)).rejects.toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });

      // A prompt longer than the context.
      await expect(kv.restore(seq, tokens(5, CONTEXT_SIZE + 1))).rejects.toMatchObject({
        code: 'KVTIER_BAD_ARGUMENT',
      });
      await expect(kv.restore(seq, [])).rejects.toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });

      // A sequence in use.
      await seq.clearHistory();
      const first = kv.restore(seq, P2);
      await expect(kv.restore(seq, P2)).rejects.toMatchObject({ code: 'KVTIER_LOCKED' });
      await expect(kv.store(seq)).rejects.toMatchObject({ code: 'KVTIER_LOCKED' });
      expect((await first).restoredTokens).toBe(144);

      // None of it stored anything.
      expect(kv.warehouse.keys().sort()).toEqual(before);
    } finally {
      await kv.close();
      await other.context.dispose();
      await other.model.dispose();
      await wide.context.dispose();
      await wide.model.dispose();
    }
  }, 120_000);

  it('a warehouse passed in must match the block size', async () => {
    const wh = await Warehouse.open({ blockBytes: 4000, tiers: [{ kind: 'host', bytes: MiB }] });
    try {
      expect(() => new LlamaKvCache(context, wh, { blockTokens: B })).toThrow(/another model/);
    } finally {
      await wh.close();
    }
  });
});
