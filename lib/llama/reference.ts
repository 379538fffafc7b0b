/**
 * References to check a continuation after a restore against. Full prefill is what a user
 * compares with, but it evaluates the prompt's tail inside a larger batch than a restore leaves
 * to evaluate, and llama.cpp's CPU kernels sum in another order for another batch shape: on a
 * random model whose logits are nearly flat that alone can flip the greedy token. The
 * batch-matched reference prefills exactly the tokens the restore brought back, then evaluates
 * the rest in one call, as the restore path does: a correct restore gives bit-identical logits.
 */
import type { LlamaSequenceLike } from './engine.js';

/** What the references need of a node-llama-cpp context sequence, beyond the adapter's needs. */
export interface LlamaEvalSequenceLike extends LlamaSequenceLike {
  evaluateWithoutGeneratingNewTokens(tokens: number[]): Promise<void>;
  evaluateWithMetadata(
    tokens: number[],
    metadata: { probabilities: true },
    options?: { temperature?: number },
  ): AsyncGenerator<{ token: number; probabilities: Map<number, number> }, void, unknown>;
}

export interface NextToken {
  token: number;
  /** The whole vocabulary's probabilities for the first generated token. */
  probabilities: Map<number, number>;
}

export interface Comparison {
  /** The greedy tokens are the same. */
  sameToken: boolean;
  /** Largest difference of a token's probability between the two (0: identical logits). */
  maxProbDelta: number;
  /** The reference's margin between its top two tokens: a flip needs noise about this size. */
  top1Gap: number;
}

/** Greedy next token after evaluating tokens (appended to what the sequence holds). */
export async function nextAfter(seq: LlamaEvalSequenceLike, tokens: number[]): Promise<NextToken> {
  for await (const m of seq.evaluateWithMetadata(
    tokens,
    { probabilities: true },
    { temperature: 0 },
  )) {
    return { token: m.token, probabilities: m.probabilities };
  }
  throw new Error('the engine generated no token');
}

/** Full prefill of the prompt on a cleared sequence (in the context's batches). */
export async function fullPrefillNext(
  seq: LlamaEvalSequenceLike,
  prompt: readonly number[],
): Promise<NextToken> {
  await seq.clearHistory();
  return nextAfter(seq, [...prompt]);
}

/** Prefills the first `restored` tokens, then evaluates the rest in one call, as a restore does. */
export async function batchMatchedNext(
  seq: LlamaEvalSequenceLike,
  prompt: readonly number[],
  restored: number,
): Promise<NextToken> {
  await seq.clearHistory();
  if (restored > 0) await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, restored));
  return nextAfter(seq, prompt.slice(restored));
}

/** b against the reference a. */
export function compareNext(a: NextToken, b: NextToken): Comparison {
  let maxProbDelta = a.probabilities.size === b.probabilities.size ? 0 : 1;
  let p1 = 0;
  let p2 = 0;
  for (const [tok, p] of a.probabilities) {
    maxProbDelta = Math.max(maxProbDelta, Math.abs(p - (b.probabilities.get(tok) ?? 0)));
    if (p > p1) [p1, p2] = [p, p1];
    else if (p > p2) p2 = p;
  }
  return { sameToken: a.token === b.token, maxProbDelta, top1Gap: p1 - p2 };
}
