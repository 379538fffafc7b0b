/**
 * A restore is exact, not merely close: after it the engine's logits are bit-identical to a
 * reference that prefills the same prefix and evaluates the rest in one call (the batch-matched
 * reference), whose own run-to-run noise is measured by running it twice. Full prefill differs
 * by the batch shape of the prompt's tail alone, which can flip a near-tie greedy token.
 */
import type { LlamaContext, LlamaContextSequence, LlamaModel, Token } from 'node-llama-cpp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { LlamaKvCache } from '../../lib/llama/adapter.js';
import { TINY_MODEL } from '../../lib/llama/gguf-writer.js';
import {
  batchMatchedNext,
  compareNext,
  fullPrefillNext,
  nextAfter,
} from '../../lib/llama/reference.js';
import { tempDir } from '../helpers.js';
import { loadEngine, openContext, tokens, writeModel } from './engine.js';

const llama = await loadEngine();
const B = 16;
const BATCH = 32;
// 12 whole blocks and one token: 193 tokens restore as 192 and leave one to evaluate, spanning
// 12 blocks and 7 prefill batches.
const LONG = tokens(11, 12 * B + 1);
// Shares LONG's first 150 tokens: 9 blocks restore and 61 tokens are evaluated in one call.
const FORK = [...LONG.slice(0, 150), ...tokens(12, 61)];

describe.skipIf(!llama)('llama restore is bit-identical to the batch-matched reference', () => {
  const dir = tempDir('kvtier-llama-det-');
  let model: LlamaModel;
  let context: LlamaContext;
  let seq: LlamaContextSequence;
  let kv: LlamaKvCache;

  beforeAll(async () => {
    ({ model, context } = await openContext(llama!, writeModel(dir.path, 'tiny'), {
      batchSize: BATCH,
    }));
    seq = context.getSequence();
    kv = await LlamaKvCache.open(context, {
      blockTokens: B,
      tiers: [{ kind: 'host', bytes: 4 << 20 }],
    });
    await seq.evaluateWithoutGeneratingNewTokens(LONG as Token[]);
    expect(await kv.store(seq)).toMatchObject({ blocks: 12, stored: 12 });
  }, 120_000);

  afterAll(async () => {
    await kv?.close();
    await context?.dispose();
    await model?.dispose();
    dir.remove();
  });

  for (const [name, prompt, restored] of [
    ['all but the last token restored', LONG, 12 * B],
    ['a shared prefix restored, 61 tokens evaluated', FORK, 9 * B],
  ] as const) {
    it(
      name,
      async () => {
        expect(context.batchSize).toBe(BATCH);
        const ref = await batchMatchedNext(seq, prompt, restored);
        const rerun = await batchMatchedNext(seq, prompt, restored);
        const noise = compareNext(ref, rerun);
        expect(ref.probabilities.size).toBe(TINY_MODEL.vocab);
        expect(noise.sameToken).toBe(true);

        await seq.clearHistory();
        const r = await kv.restore(seq, prompt);
        expect(r).toMatchObject({ source: 'warehouse', restoredTokens: restored, failed: false });
        const after = await nextAfter(seq, r.rest);
        const vsRef = compareNext(ref, after);
        expect(vsRef.sameToken).toBe(true);
        // The engine is deterministic run to run on the CPU (measured: 0), and the restore is exact.
        expect(noise.maxProbDelta).toBe(0);
        expect(vsRef.maxProbDelta).toBe(0);
        for (const [tok, p] of ref.probabilities) expect(after.probabilities.get(tok)).toBe(p);

        // Full prefill is only close: its tail went through another batch shape.
        const full = compareNext(await fullPrefillNext(seq, prompt), after);
        expect(full.maxProbDelta).toBeLessThan(1e-3);
      },
      120_000,
    );
  }
});
