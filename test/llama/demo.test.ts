/**
 * `kvtier demo --engine llama` on the real engine with the tiny model: its report reconciles
 * (tokens saved = what the restored blocks hold, totals = sums = the adapter's counters), the
 * blocks each request restores are the longest prefix earlier requests stored, and every
 * continuation matches the batch-matched reference (bit-identity itself is determinism.test.ts's:
 * here the blocks were computed in other requests' batches).
 */
import { describe, expect, it } from 'vitest';

import {
  BATCH_NOISE_BOUND,
  formatLlamaAgent,
  llamaAgentWorkload,
  runLlamaAgent,
} from '../../lib/apps/demo/llama-agent.js';
import { TINY_MODEL } from '../../lib/llama/gguf-writer.js';
import { loadEngine } from './engine.js';

const llama = await loadEngine();
const B = 32;
const REQUESTS = 6;
const SEED = 3;

/** Whole blocks of each prompt (at most all but its last token's) stored by earlier requests. */
function expectedBlocks(): number[] {
  const stored = new Set<string>();
  return llamaAgentWorkload(SEED, REQUESTS, TINY_MODEL.vocab).map(({ prompt, all }) => {
    const max = Math.ceil((prompt.length - 1) / B);
    let k = 0;
    while (k < max && stored.has(prompt.slice(0, (k + 1) * B).join())) k++;
    for (let j = 1; j * B <= all.length; j++) stored.add(all.slice(0, j * B).join());
    return k;
  });
}

describe.skipIf(!llama)('kvtier demo --engine llama', () => {
  it('reports prefill saved and time to first token per turn, and it reconciles', async () => {
    const r = await runLlamaAgent({
      requests: REQUESTS,
      seed: SEED,
      blockTokens: B,
      maxTokens: 3,
      threads: 1,
    });
    expect(r.turns).toHaveLength(REQUESTS);
    expect(r.turns.map((t) => t.restoredBlocks)).toEqual(expectedBlocks());
    expect(r.turns[0]!.restoredTokens).toBe(0);
    for (const t of r.turns) {
      expect(t.restoredTokens + t.prefilledTokens).toBe(t.promptTokens);
      expect(t.restoredTokens).toBe(Math.min(t.restoredBlocks * B, t.promptTokens - 1));
      expect(t.source).toBe(t.restoredBlocks > 0 ? 'warehouse' : 'none');
      expect(t.generated).toHaveLength(3);
      expect(t.matchesBatchMatched).toBe(true);
      expect(t.vsBatchMatched.sameToken).toBe(true);
      expect(t.vsBatchMatched.maxProbDelta).toBeLessThanOrEqual(BATCH_NOISE_BOUND);
      // Nothing restored: the same computation, bit for bit.
      if (t.restoredTokens === 0) expect(t.identicalToBatchMatched).toBe(true);
      expect(t.vsFullPrefill.maxProbDelta).toBeLessThan(1e-3);
      expect(t.ttftMs).toBeGreaterThan(0);
      expect(t.fullPrefillTtftMs).toBeGreaterThan(0);
    }
    const sum = (f: (t: (typeof r.turns)[number]) => number): number =>
      r.turns.reduce((n, t) => n + f(t), 0);
    expect(r.totals).toMatchObject({
      promptTokens: sum((t) => t.promptTokens),
      restoredTokens: sum((t) => t.restoredTokens),
      prefilledTokens: sum((t) => t.prefilledTokens),
      restoredBlocks: sum((t) => t.restoredBlocks),
      storedBlocks: sum((t) => t.storedBlocks),
      matchesBatchMatched: REQUESTS,
    });
    expect(r.totals.restoredTokens).toBeGreaterThan(0);
    expect(r.stats).toMatchObject({
      restores: REQUESTS,
      restoredTokens: r.totals.restoredTokens,
      prefilledTokens: r.totals.prefilledTokens,
      blocksStored: r.totals.storedBlocks,
      restoreFailures: 0,
      unstorable: 0,
    });
    const text = formatLlamaAgent(r);
    expect(text).toContain(
      `prefill tokens saved: ${r.totals.restoredTokens} of ${r.totals.promptTokens}`,
    );
    expect(text).toContain(`${REQUESTS}/${REQUESTS} match the batch-matched reference`);
  }, 180_000);
});
