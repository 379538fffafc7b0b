/**
 * `kvtier bench codec --llama`: the codecs on KV that a real engine produced. node-llama-cpp
 * (its prebuilt CPU llama.cpp) loads a llama-architecture model that kvtier writes itself
 * (lib/llama/gguf-writer.ts: random weights, nothing can be downloaded here), evaluates a prompt,
 * and saves the sequence state; the K and V of every layer are read out of that state
 * (lib/llama/state-format.ts), packed into kvtier blocks (NHD) and run through each codec.
 *
 * Reported per codec: relative RMS and max error of K and V; the error of attention outputs
 * softmax(qKᵀ/√d)V with the original versus the decoded K and V, the queries being K rows of the
 * same layer and head at other positions (the engine's Q is not in its state; K rows carry the
 * same RoPE and channel structure); and the engine's own next-token distribution after the
 * decoded KV is loaded back into it, against the original KV loaded the same way. Perplexity and
 * task accuracy are not measured, and with random weights they would mean nothing.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';

import { KvtierError } from '../../index.js';
import { BlockCodec, nextAfter, type LlamaEvalSequenceLike } from '../../internal.js';
import {
  BENCH_MODEL,
  importNodeLlamaCpp,
  parseSeqState,
  writeLlamaGguf,
  type LlamaModelSpec,
} from '../../llama/index.js';
import { BENCH_CODECS } from './codec-bench.js';
import { fromBytes, toBytes } from './kv-values.js';
import { seededRandom } from './stats.js';
import { at, gather, scatter, type Shape } from './llama-kv.js';

export interface CodecLlamaOptions {
  /** Prompt tokens evaluated (whole blocks are compared). */
  tokens: number;
  blockTokens: number;
  /** Queries per (layer, head) for the attention error. */
  queries: number;
  /** Tokens evaluated after the (decoded) KV is loaded back, before the compared next token. */
  tail: number;
  threads: number;
  group: number;
  /** The context's flash attention (default: the engine's choice); off stores V transposed. */
  flashAttention?: boolean;
  model?: LlamaModelSpec;
  dir?: string;
  onProgress?: (message: string) => void;
}

export const CODEC_LLAMA_DEFAULTS = {
  tokens: 2048,
  blockTokens: 16,
  queries: 8,
  tail: 8,
  threads: 2,
  group: 32,
};

export interface KvStats {
  /** RMS of K and V. */
  kRms: number;
  vRms: number;
  kAbsMax: number;
  vAbsMax: number;
  /**
   * K's outlier channels: per (layer, head) the largest channel RMS over the median one, averaged
   * (near 1 when every channel has the same scale; KIVI finds trained keys with a few channels
   * an order of magnitude larger than the rest).
   */
  kChannelPeakToMedian: number;
}

export interface CodecLlamaRow {
  codec: string;
  encodedBlockBytes: number;
  ratio: number;
  kRelRms: number;
  vRelRms: number;
  kMaxAbsErr: number;
  vMaxAbsErr: number;
  /** Max error over the largest |x| of K (and of V). */
  kMaxRelToAmax: number;
  vMaxRelToAmax: number;
  attnRelErrMean: number;
  attnRelErrMax: number;
  /** The engine's next token after the decoded KV, against after the original KV. */
  engine: { sameToken: boolean; maxProbDelta: number; totalVariation: number };
}

export interface CodecLlamaReport {
  bench: 'codec-llama';
  date: string;
  engine: string;
  machine: { cpus: number; cpuModel: string };
  model: LlamaModelSpec & { weights: 'random'; headDim: number };
  options: Omit<CodecLlamaOptions, 'onProgress' | 'model' | 'dir' | 'flashAttention'>;
  kvType: string;
  vTransposed: boolean;
  blocks: number;
  decodedBlockBytes: number;
  kv: KvStats;
  /** The original KV loaded twice: the engine's own noise (0 when loading is exact). */
  engineNoise: { maxProbDelta: number; top1Gap: number };
  rows: CodecLlamaRow[];
  notes: string[];
}

function bad(message: string): never {
  throw new KvtierError('KVTIER_BAD_ARGUMENT', message);
}

function kvStats(x: Float32Array, s: Shape, blocks: number): KvStats {
  const ss = [0, 0];
  const amax = [0, 0];
  const n = [0, 0];
  const slab = s.tokens * s.heads * s.dim;
  for (let i = 0; i < x.length; i++) {
    const kv = Math.floor(i / slab) % 2;
    const a = x[i]!;
    ss[kv]! += a * a;
    amax[kv] = Math.max(amax[kv]!, Math.abs(a));
    n[kv]!++;
  }
  let peak = 0;
  for (let l = 0; l < s.layers; l++)
    for (let h = 0; h < s.heads; h++) {
      const ch = new Float64Array(s.dim);
      for (let b = 0; b < blocks; b++)
        for (let t = 0; t < s.tokens; t++) {
          const o = at(s, b, l, 0, t, h);
          for (let d = 0; d < s.dim; d++) ch[d]! += x[o + d]! ** 2;
        }
      const sorted = Array.from(ch).sort((p, q) => p - q);
      const median = sorted[sorted.length >> 1]!;
      peak += Math.sqrt(sorted[sorted.length - 1]! / Math.max(median, 1e-30));
    }
  return {
    kRms: Math.sqrt(ss[0]! / n[0]!),
    vRms: Math.sqrt(ss[1]! / n[1]!),
    kAbsMax: amax[0]!,
    vAbsMax: amax[1]!,
    kChannelPeakToMedian: peak / (s.layers * s.heads),
  };
}

/** Reconstruction and attention-output error of y against x. */
function errors(
  x: Float32Array,
  y: Float32Array,
  s: Shape,
  blocks: number,
  queries: number,
): Omit<CodecLlamaRow, 'codec' | 'encodedBlockBytes' | 'ratio' | 'engine'> {
  const se = [0, 0];
  const ss = [0, 0];
  const maxErr = [0, 0];
  const amax = [0, 0];
  const slab = s.tokens * s.heads * s.dim;
  for (let i = 0; i < x.length; i++) {
    const kv = Math.floor(i / slab) % 2;
    const a = x[i]!;
    const e = y[i]! - a;
    se[kv]! += e * e;
    ss[kv]! += a * a;
    maxErr[kv] = Math.max(maxErr[kv]!, Math.abs(e));
    amax[kv] = Math.max(amax[kv]!, Math.abs(a));
  }
  const N = blocks * s.tokens;
  const D = s.dim;
  const scores = new Float64Array(N);
  const attend = (kv: Float32Array, q: Float32Array, l: number, h: number): Float64Array => {
    let mx = -Infinity;
    for (let n = 0; n < N; n++) {
      const o = at(s, Math.floor(n / s.tokens), l, 0, n % s.tokens, h);
      let dot = 0;
      for (let d = 0; d < D; d++) dot += q[d]! * kv[o + d]!;
      scores[n] = dot / Math.sqrt(D);
      mx = Math.max(mx, scores[n]!);
    }
    let z = 0;
    for (let n = 0; n < N; n++) z += scores[n] = Math.exp(scores[n]! - mx);
    const out = new Float64Array(D);
    for (let n = 0; n < N; n++) {
      const o = at(s, Math.floor(n / s.tokens), l, 1, n % s.tokens, h);
      const w = scores[n]! / z;
      for (let d = 0; d < D; d++) out[d]! += w * kv[o + d]!;
    }
    return out;
  };
  // The same query positions for every codec (a fixed seed).
  const rand = seededRandom(11);
  const errs: number[] = [];
  for (let l = 0; l < s.layers; l++)
    for (let h = 0; h < s.heads; h++)
      for (let qi = 0; qi < queries; qi++) {
        const n = Math.floor(rand() * N);
        const o = at(s, Math.floor(n / s.tokens), l, 0, n % s.tokens, h);
        const q = x.slice(o, o + D);
        const a = attend(x, q, l, h);
        const b = attend(y, q, l, h);
        let num = 0;
        let den = 0;
        for (let d = 0; d < D; d++) {
          num += (a[d]! - b[d]!) ** 2;
          den += a[d]! ** 2;
        }
        errs.push(Math.sqrt(num / Math.max(den, 1e-30)));
      }
  return {
    kRelRms: Math.sqrt(se[0]! / ss[0]!),
    vRelRms: Math.sqrt(se[1]! / ss[1]!),
    kMaxAbsErr: maxErr[0]!,
    vMaxAbsErr: maxErr[1]!,
    kMaxRelToAmax: maxErr[0]! / amax[0]!,
    vMaxRelToAmax: maxErr[1]! / amax[1]!,
    attnRelErrMean: errs.reduce((p, c) => p + c, 0) / errs.length,
    attnRelErrMax: Math.max(...errs),
  };
}

function promptOf(n: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0 || 1;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push(3 + (s % (vocab - 3)));
  }
  return out;
}

function distance(
  a: Map<number, number>,
  b: Map<number, number>,
): { maxProbDelta: number; totalVariation: number } {
  let max = 0;
  let tv = 0;
  for (const [tok, p] of a) {
    const d = Math.abs(p - (b.get(tok) ?? 0));
    max = Math.max(max, d);
    tv += d;
  }
  for (const [tok, p] of b) if (!a.has(tok)) tv += p;
  return { maxProbDelta: max, totalVariation: tv / 2 };
}

export async function runCodecLlama(options: CodecLlamaOptions): Promise<CodecLlamaReport> {
  const o = options;
  const spec = o.model ?? BENCH_MODEL;
  if (!(o.tokens >= o.blockTokens))
    bad('the prompt (--llama-tokens) must hold at least one block (--tokens tokens)');
  const progress = o.onProgress ?? (() => undefined);
  const kvHeads = spec.kvHeads ?? spec.heads;
  const dim = spec.embd / spec.heads;
  const work = mkdtempSync(join(o.dir ?? tmpdir(), 'kvtier-codec-llama-'));
  const { getLlama, LlamaLogLevel } = await importNodeLlamaCpp();
  const modelPath = join(work, 'model.gguf');
  writeLlamaGguf(modelPath, {
    ...spec,
    contextLength: Math.max(spec.contextLength, o.tokens + o.tail + 64),
  });
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath });
  try {
    const context = await model.createContext({
      contextSize: o.tokens + o.tail + 64,
      sequences: 1,
      threads: o.threads,
      ...(o.flashAttention === undefined ? {} : { flashAttention: o.flashAttention }),
    });
    const seq = context.getSequence() as unknown as LlamaEvalSequenceLike;
    const prompt = promptOf(o.tokens + o.tail, spec.vocab, 12345);
    progress(`prefill of ${o.tokens} tokens`);
    await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, o.tokens));
    const statePath = join(work, 'state.bin');
    await seq.saveStateToFile(statePath);
    const state = parseSeqState(readFileSync(statePath));
    if (!state.layout || state.cells !== o.tokens) bad('the saved state does not hold the prompt');
    if (state.layout.layers.length !== spec.layers) bad('the state has another layer count');
    const s: Shape = { layers: spec.layers, tokens: o.blockTokens, heads: kvHeads, dim };
    if (
      state.layout.layers[0]!.kRow !==
      kvHeads * dim * (state.layout.layers[0]!.kType === 1 ? 2 : 4)
    ) {
      bad('the state K rows are not kvHeads × headDim');
    }
    const blocks = Math.floor(o.tokens / o.blockTokens);
    const dtype = state.layout.layers[0]!.kType === 1 ? 'fp16' : 'fp32';
    const x = gather(state, s, blocks);
    const bytes = toBytes(x, dtype);
    // Gather and scatter must be inverses over the whole state, or the rows below compare
    // something other than the engine's KV.
    if (!scatter(state, s, blocks, bytes).equals(state.buf)) {
      throw new Error('codec --llama: the KV read out of the state does not write back the same');
    }
    const layout = {
      dtype,
      numLayers: s.layers,
      blockTokens: s.tokens,
      kvHeads: s.heads,
      headDim: s.dim,
    };
    // The next token after the tail, with the prompt's KV loaded from a state file.
    const nextWith = async (file: string): Promise<Map<number, number>> => {
      await seq.clearHistory();
      await seq.loadStateFromFile(file, { acceptRisk: true });
      return (await nextAfter(seq, prompt.slice(o.tokens))).probabilities;
    };
    progress('reference: the original KV loaded back');
    const ref = await nextWith(statePath);
    const again = distance(ref, await nextWith(statePath));
    let p1 = 0;
    let p2 = 0;
    for (const p of ref.values()) {
      if (p > p1) [p1, p2] = [p, p1];
      else if (p > p2) p2 = p;
    }
    const refToken = [...ref.entries()].reduce((a, b) => (b[1] > a[1] ? b : a))[0];
    const rows: CodecLlamaRow[] = [];
    for (const c of BENCH_CODECS) {
      progress(c.name);
      const codec = BlockCodec.open(c.spec(o.group), layout);
      const enc = new Uint8Array(codec.encodedBytes * blocks);
      codec.encode(bytes, enc, blocks);
      const dec = new Uint8Array(bytes.length);
      codec.decode(enc, dec, blocks);
      const y = fromBytes(dec, dtype);
      const decodedPath = join(work, 'decoded.bin');
      writeFileSync(decodedPath, scatter(state, s, blocks, dec));
      const probs = await nextWith(decodedPath);
      const tok = [...probs.entries()].reduce((a, b) => (b[1] > a[1] ? b : a))[0];
      rows.push({
        codec: c.name,
        encodedBlockBytes: codec.encodedBytes,
        ratio: codec.ratio,
        ...errors(x, y, s, blocks, o.queries),
        engine: { sameToken: tok === refToken, ...distance(ref, probs) },
      });
    }
    await context.dispose();
    return {
      bench: 'codec-llama',
      date: new Date().toISOString(),
      engine: 'node-llama-cpp 3.21.1, prebuilt CPU binary',
      machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? '' },
      model: { ...spec, weights: 'random', headDim: dim },
      options: {
        tokens: o.tokens,
        blockTokens: o.blockTokens,
        queries: o.queries,
        tail: o.tail,
        threads: o.threads,
        group: o.group,
      },
      kvType: dtype === 'fp16' ? 'f16' : 'f32',
      vTransposed: state.layout.vTrans,
      blocks,
      decodedBlockBytes: bytes.length / blocks,
      kv: kvStats(x, s, blocks),
      engineNoise: { maxProbDelta: again.maxProbDelta, top1Gap: p1 - p2 },
      rows,
      notes: [
        'KV from a real engine (llama.cpp via node-llama-cpp: real RoPE and attention code) running a model kvtier writes with random weights; no trained model file exists on this machine and none can be downloaded',
        'attention queries are K rows of the same layer and head at random positions (the engine does not save Q)',
        'engine: next-token probabilities after the decoded KV is loaded into the engine and a tail of tokens evaluated, against the original KV loaded the same way; with random weights the distribution is nearly flat, so these deltas understate what a trained model would show',
        'perplexity and task accuracy were not measured',
      ],
    };
  } finally {
    await model.dispose();
    rmSync(work, { recursive: true, force: true });
  }
}

const e = (x: number): string => x.toExponential(2);

export function formatCodecLlama(r: CodecLlamaReport): string {
  const m = r.model;
  const lines = [
    `node-llama-cpp KV: random-weight llama model (${m.layers} layers, ${m.heads} heads, ${m.kvHeads ?? m.heads} KV heads, head dim ${m.headDim}), ${r.options.tokens}-token prompt, ${r.kvType} cache${r.vTransposed ? ' (V transposed)' : ''}, ${r.blocks} blocks of ${r.options.blockTokens} tokens (${r.decodedBlockBytes} B)`,
    `KV: K RMS ${e(r.kv.kRms)}, max |K| ${e(r.kv.kAbsMax)}; V RMS ${e(r.kv.vRms)}, max |V| ${e(r.kv.vAbsMax)}; K channel peak/median RMS ${r.kv.kChannelPeakToMedian.toFixed(2)}`,
    `engine noise (original KV loaded twice): max prob delta ${e(r.engineNoise.maxProbDelta)}; top-1 margin ${e(r.engineNoise.top1Gap)}`,
    '',
    '| codec | ratio | K rel. RMS | V rel. RMS | K max err / max abs | V max err / max abs | attn rel. err mean | attn rel. err max | engine: same next token | engine: max prob delta | engine: total variation |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: | ---: |',
    ...r.rows.map(
      (a) =>
        `| ${a.codec} | ${a.ratio.toFixed(3)} | ${e(a.kRelRms)} | ${e(a.vRelRms)} | ${e(a.kMaxRelToAmax)} | ${e(a.vMaxRelToAmax)} | ${e(a.attnRelErrMean)} | ${e(a.attnRelErrMax)} | ${a.engine.sameToken ? 'yes' : 'no'} | ${e(a.engine.maxProbDelta)} | ${e(a.engine.totalVariation)} |`,
    ),
    '',
    ...r.notes.map((n) => `- ${n}`),
  ];
  return `${lines.join('\n')}\n`;
}

export function codecLlamaJson(r: CodecLlamaReport): string {
  return `${JSON.stringify(r, null, 2)}\n`;
}
