/**
 * `kvtier demo --engine llama`: the demo's multi-turn agent workload on a real engine
 * (node-llama-cpp, CPU, a small random model written on the spot). Every request restores the
 * longest cached prefix of its prompt through kvtier, generates greedily, and is checked against
 * a full prefill of the same prompt and against the batch-matched reference (llama/reference.ts);
 * then the workload's reply is evaluated and the new blocks stored, so the next turn finds them.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { KvtierError } from '../../index.js';
import {
  importNodeLlamaCpp,
  kvBytesPerToken,
  LlamaKvCache,
  type LlamaKvStats,
  type LlamaModelSpec,
  TINY_MODEL,
  writeLlamaGguf,
} from '../../llama/index.js';
import {
  compareNext,
  type Comparison,
  type LlamaEvalSequenceLike,
  nextAfter,
  type NextToken,
} from '../../internal.js';
import { generateWorkload, type DemoRequest, type RequestKind } from './workload.js';

/**
 * How far a restored continuation may stray from the batch-matched reference. The restore is
 * exact (test/llama/determinism.test.ts), but blocks stored by an earlier request were computed
 * in that request's batches, which can end at other tokens than the reference's fresh prefill:
 * the KV then differs in its last bits (~1e-6 in probability here). A wrong block moves
 * probabilities by orders of magnitude more.
 */
export const BATCH_NOISE_BOUND = 1e-4;

export interface LlamaAgentOptions {
  requests: number;
  seed: number;
  blockTokens: number;
  /** Tokens generated per request and compared with the references. */
  maxTokens: number;
  threads: number;
  model?: LlamaModelSpec;
  dir?: string;
  onProgress?: (message: string) => void;
}

export interface LlamaAgentTurn {
  index: number;
  session: number;
  turn: number;
  kind: RequestKind;
  promptTokens: number;
  source: 'warehouse' | 'sequence' | 'none';
  restoredBlocks: number;
  restoredTokens: number;
  prefilledTokens: number;
  /** From the request to its first token, restore included. */
  ttftMs: number;
  /** The same prompt fully prefilled, for comparison. */
  fullPrefillTtftMs: number;
  generated: number[];
  sameAsFullPrefill: boolean;
  vsFullPrefill: Comparison;
  /** Same greedy tokens as the batch-matched run, probabilities within BATCH_NOISE_BOUND. */
  matchesBatchMatched: boolean;
  /** And bit-identical first-token probabilities. */
  identicalToBatchMatched: boolean;
  vsBatchMatched: Comparison;
  storedBlocks: number;
}

export interface LlamaAgentReport {
  kind: 'demo-llama';
  model: LlamaModelSpec & { bytes: number };
  contextSize: number;
  blockTokens: number;
  bytesPerToken: number;
  turns: LlamaAgentTurn[];
  totals: {
    promptTokens: number;
    restoredTokens: number;
    prefilledTokens: number;
    restoredBlocks: number;
    storedBlocks: number;
    ttftMs: number;
    fullPrefillTtftMs: number;
    sameAsFullPrefill: number;
    matchesBatchMatched: number;
    identicalToBatchMatched: number;
  };
  stats: LlamaKvStats;
}

interface Continuation {
  first: NextToken;
  tokens: number[];
  ttftMs: number;
}

/** Evaluates tokens, then generates n greedily; t0 is when the request began. */
async function continueWith(
  seq: LlamaEvalSequenceLike,
  tokens: number[],
  n: number,
  t0: number,
): Promise<Continuation> {
  const first = await nextAfter(seq, tokens);
  const ttftMs = performance.now() - t0;
  const out = [first.token];
  if (n > 1) {
    for await (const tok of seq.evaluate([first.token], { temperature: 0 })) {
      out.push(tok);
      if (out.length >= n) break;
    }
  }
  return { first, tokens: out, ttftMs };
}

/** The demo's workload scaled to a small model; token ids shifted past the model's specials. */
export function llamaAgentWorkload(
  seed: number,
  requests: number,
  vocab: number,
): { prompt: number[]; all: number[]; request: DemoRequest }[] {
  const workload = generateWorkload({
    seed,
    requests,
    vocab: vocab - 3,
    maxContextTokens: 4096,
    systemPrompts: 2,
    concurrency: 3,
  });
  return workload.requests.map((request) => {
    const all = Array.from(request.tokens, (t) => t + 3);
    return { prompt: all.slice(0, request.promptTokens), all, request };
  });
}

export async function runLlamaAgent(options: LlamaAgentOptions): Promise<LlamaAgentReport> {
  const { blockTokens: B, maxTokens } = options;
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'maxTokens must be a positive integer');
  }
  const progress = options.onProgress ?? (() => undefined);
  const spec = options.model ?? { ...TINY_MODEL, seed: 7 };
  const workload = llamaAgentWorkload(options.seed, options.requests, spec.vocab);
  const longest = Math.max(...workload.map((r) => r.all.length));
  const contextSize = Math.ceil((longest + maxTokens + 1) / 256) * 256;
  const work = mkdtempSync(join(options.dir ?? tmpdir(), 'kvtier-demo-llama-'));
  const modelPath = join(work, 'agent.gguf');
  const { getLlama, LlamaLogLevel } = await importNodeLlamaCpp();
  writeLlamaGguf(modelPath, { ...spec, contextLength: Math.max(spec.contextLength, contextSize) });
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath });
  const context = await model.createContext({
    contextSize,
    sequences: 2,
    threads: options.threads,
  });
  let kv: LlamaKvCache | undefined;
  try {
    const seq: LlamaEvalSequenceLike = context.getSequence();
    const ref: LlamaEvalSequenceLike = context.getSequence();
    const perToken = kvBytesPerToken(context);
    const total = workload.reduce((n, r) => n + r.all.length, 0);
    const bytes = Math.ceil((total * perToken * 1.25) / (1 << 20) + 8) << 20;
    kv = await LlamaKvCache.open(context, {
      blockTokens: B,
      tiers: [
        { kind: 'host', bytes: Math.max(bytes >> 2, 4 << 20) },
        { kind: 'file', dir: join(work, 'tier'), bytes },
      ],
    });
    const turns: LlamaAgentTurn[] = [];
    for (const { prompt, all, request: req } of workload) {
      progress(`request ${req.index}: ${req.kind}, ${prompt.length} tokens`);
      // Each request starts on an empty sequence, as on a server that served other sessions
      // in between: what it finds comes from the warehouse alone.
      await seq.clearHistory();
      let t0 = performance.now();
      const restore = await kv.restore(seq, prompt);
      const got = await continueWith(seq, restore.rest, maxTokens, t0);

      await ref.clearHistory();
      t0 = performance.now();
      const full = await continueWith(ref, prompt, maxTokens, t0);
      await ref.clearHistory();
      if (restore.restoredTokens > 0) {
        await ref.evaluateWithoutGeneratingNewTokens(prompt.slice(0, restore.restoredTokens));
      }
      const matched = await continueWith(ref, restore.rest, maxTokens, performance.now());
      await ref.clearHistory();
      const vsBatchMatched = compareNext(matched.first, got.first);

      // The agent's reply is the workload's: evaluate it, so the next turn's prefix is cached.
      const held = seq.contextTokens.length;
      if (held > prompt.length) {
        await seq.eraseContextTokenRanges([{ start: prompt.length, end: held }]);
      }
      await seq.evaluateWithoutGeneratingNewTokens(all.slice(prompt.length));
      const stored = await kv.store(seq);
      turns.push({
        index: req.index,
        session: req.session,
        turn: req.turn,
        kind: req.kind,
        promptTokens: prompt.length,
        source: restore.source,
        restoredBlocks: restore.blocks,
        restoredTokens: restore.restoredTokens,
        prefilledTokens: restore.rest.length,
        ttftMs: got.ttftMs,
        fullPrefillTtftMs: full.ttftMs,
        generated: got.tokens,
        sameAsFullPrefill: full.tokens.join() === got.tokens.join(),
        vsFullPrefill: compareNext(full.first, got.first),
        matchesBatchMatched:
          matched.tokens.join() === got.tokens.join() &&
          vsBatchMatched.maxProbDelta <= BATCH_NOISE_BOUND,
        identicalToBatchMatched:
          matched.tokens.join() === got.tokens.join() && vsBatchMatched.maxProbDelta === 0,
        vsBatchMatched,
        storedBlocks: stored.stored,
      });
    }
    const sum = (f: (t: LlamaAgentTurn) => number): number => turns.reduce((n, t) => n + f(t), 0);
    return {
      kind: 'demo-llama',
      model: { ...spec, bytes: statSync(modelPath).size },
      contextSize,
      blockTokens: B,
      bytesPerToken: perToken,
      turns,
      totals: {
        promptTokens: sum((t) => t.promptTokens),
        restoredTokens: sum((t) => t.restoredTokens),
        prefilledTokens: sum((t) => t.prefilledTokens),
        restoredBlocks: sum((t) => t.restoredBlocks),
        storedBlocks: sum((t) => t.storedBlocks),
        ttftMs: sum((t) => t.ttftMs),
        fullPrefillTtftMs: sum((t) => t.fullPrefillTtftMs),
        sameAsFullPrefill: sum((t) => (t.sameAsFullPrefill ? 1 : 0)),
        matchesBatchMatched: sum((t) => (t.matchesBatchMatched ? 1 : 0)),
        identicalToBatchMatched: sum((t) => (t.identicalToBatchMatched ? 1 : 0)),
      },
      stats: kv.stats(),
    };
  } finally {
    await kv?.close();
    await context.dispose();
    await model.dispose();
    rmSync(work, { recursive: true, force: true });
  }
}

export function formatLlamaAgent(r: LlamaAgentReport): string {
  const m = r.model;
  const t = r.totals;
  const lines = [
    `kvtier demo --engine llama: ${r.turns.length} requests on node-llama-cpp (CPU), random llama ${m.layers}L x ${m.embd}, ${(m.bytes / 2 ** 20).toFixed(1)} MiB; blocks of ${r.blockTokens} tokens`,
    '',
    '  req  sess turn kind      prompt  restored  prefilled    ttft   full ttft  same  matched',
  ];
  for (const x of r.turns) {
    lines.push(
      [
        String(x.index).padStart(5),
        String(x.session).padStart(5),
        String(x.turn).padStart(4),
        ` ${x.kind.padEnd(8)}`,
        String(x.promptTokens).padStart(7),
        String(x.restoredTokens).padStart(9),
        String(x.prefilledTokens).padStart(10),
        `${x.ttftMs.toFixed(0)} ms`.padStart(8),
        `${x.fullPrefillTtftMs.toFixed(0)} ms`.padStart(11),
        (x.sameAsFullPrefill ? 'yes' : 'no').padStart(5),
        (x.identicalToBatchMatched ? 'exact' : x.matchesBatchMatched ? 'close' : 'NO').padStart(8),
      ].join(' '),
    );
  }
  const pct = t.promptTokens > 0 ? (100 * t.restoredTokens) / t.promptTokens : 0;
  lines.push(
    '',
    `prefill tokens saved: ${t.restoredTokens} of ${t.promptTokens} (${pct.toFixed(1)}%), from ${t.restoredBlocks} restored blocks; ${t.storedBlocks} blocks stored`,
    `time to first token, all requests: ${t.ttftMs.toFixed(0)} ms restored, ${t.fullPrefillTtftMs.toFixed(0)} ms with full prefill`,
    `continuations: ${t.matchesBatchMatched}/${r.turns.length} match the batch-matched reference (${t.identicalToBatchMatched} bit-identical, the others within ${BATCH_NOISE_BOUND} where the stored blocks were computed in other batches), ${t.sameAsFullPrefill}/${r.turns.length} the same tokens as full prefill (a near tie can flip with the batch shape)`,
  );
  return `${lines.join('\n')}\n`;
}
