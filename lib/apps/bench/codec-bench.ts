/**
 * `kvtier bench codec`: the KV block codecs (docs/codecs.md) on one core. Speed: encode (SIMD and
 * scalar) and decode GB/s of decoded bytes, next to a memcpy of the same decoded bytes, sampled
 * alternately so drift on a shared machine hits both; medians. Also the asynchronous calls, whose
 * batch is split across kvtier's codec threads (all cores, up to 8). Accuracy: reconstruction error of K and V, and the error
 * of attention outputs softmax(QKᵀ/√d)V computed with the original and the decoded K and V, on
 * synthetic KV whose keys have outlier channels (KIVI's observation). Model quality (perplexity)
 * is not measured here.
 */
import { KvtierError } from '../../index.js';
import { BlockCodec, codecIsa, codecThreads, type CodecSpec } from '../../internal.js';
import { fromBytes, gaussian, syntheticKv, toBytes, type KvFloatDtype } from './kv-values.js';
import { median, seededRandom } from './stats.js';

export const CODEC_TARGETS = { decodeVsMemcpy: 0.5 } as const;

export interface CodecBenchOptions {
  dtype: KvFloatDtype;
  layers: number;
  tokens: number;
  heads: number;
  dim: number;
  group: number;
  /** Blocks per timed pass (speed). */
  blocks: number;
  reps: number;
  /** Blocks of context for the accuracy table (its tokens form one attention context). */
  accuracyBlocks: number;
  /** Layers used for the accuracy table (the first ones of the shape). */
  accuracyLayers: number;
  queries: number;
}

export const CODEC_DEFAULTS: CodecBenchOptions = {
  dtype: 'bf16',
  layers: 32,
  tokens: 16,
  heads: 8,
  dim: 128,
  group: 32,
  blocks: 8,
  reps: 7,
  accuracyBlocks: 32,
  accuracyLayers: 2,
  queries: 8,
};

export interface CodecSpeedRow {
  codec: string;
  decodedBlockBytes: number;
  encodedBlockBytes: number;
  /** Encoded / decoded bytes. */
  ratio: number;
  encodeGBps: number;
  /** The portable scalar encoder (the reference the SIMD one must match byte for byte). */
  encodeScalarGBps: number;
  decodeGBps: number;
  /** encodeAsync/decodeAsync of the same blocks on the codec threads (report.threads). */
  encodeAsyncGBps: number;
  decodeAsyncGBps: number;
  memcpyGBps: number;
  /** decode GB/s / memcpy GB/s of the same decoded bytes. */
  decodeVsMemcpy: number;
}

export interface CodecAccuracyRow {
  codec: string;
  kRelRms: number;
  vRelRms: number;
  /** Largest |x - x̂| over K and V, and that relative to the largest |x|. */
  maxAbsErr: number;
  maxRelToAmax: number;
  /** ||o - ô|| / ||o|| of attention outputs: mean and max over (layer, head, query). */
  attnRelErrMean: number;
  attnRelErrMax: number;
}

export interface CodecBenchReport {
  options: CodecBenchOptions;
  isa: string;
  /** Codec threads the asynchronous calls ran on. */
  threads: number;
  speed: CodecSpeedRow[];
  accuracy: CodecAccuracyRow[];
  notes: string[];
}

export const BENCH_CODECS: { name: string; spec: (group: number) => CodecSpec }[] = [
  { name: 'fp8-e4m3', spec: () => ({ codec: 'fp8-e4m3' }) },
  { name: 'int8 (K/channel, V/token)', spec: () => ({ codec: 'int8', scales: 'kivi' }) },
  { name: 'int8 (per token)', spec: () => ({ codec: 'int8', scales: 'token' }) },
  { name: 'kivi4', spec: (group) => ({ codec: 'kivi4', group }) },
  { name: 'kivi2', spec: (group) => ({ codec: 'kivi2', group }) },
];

const now = (): number => Number(process.hrtime.bigint()) / 1e9;

function timeOnce(fn: () => void): number {
  const t0 = now();
  fn();
  return now() - t0;
}

async function timeAsync(fn: () => Promise<void>): Promise<number> {
  const t0 = now();
  await fn();
  return now() - t0;
}

export async function runCodecBench(options: CodecBenchOptions): Promise<CodecBenchReport> {
  const o = options;
  if (o.accuracyLayers > o.layers) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'accuracy layers exceed the layers of the shape');
  }
  const layout = {
    dtype: o.dtype,
    numLayers: o.layers,
    blockTokens: o.tokens,
    kvHeads: o.heads,
    headDim: o.dim,
  };
  const shape = { layers: o.layers, tokens: o.tokens, heads: o.heads, dim: o.dim };
  const src = toBytes(syntheticKv(shape, o.blocks, 1), o.dtype);
  const decoded = new Uint8Array(src.length).fill(1);
  const copy = new Uint8Array(src.length).fill(1);
  const speed: CodecSpeedRow[] = [];
  for (const c of BENCH_CODECS) {
    const codec = BlockCodec.open(c.spec(o.group), layout);
    const enc = new Uint8Array(codec.encodedBytes * o.blocks).fill(1);
    const enc_t: number[] = [];
    const scalar_t: number[] = [];
    const dec_t: number[] = [];
    const cpy_t: number[] = [];
    const aenc_t: number[] = [];
    const adec_t: number[] = [];
    codec.encode(src, enc, o.blocks); // warm-up
    codec.decode(enc, decoded, o.blocks);
    await codec.decodeAsync(enc, decoded, o.blocks);
    for (let r = 0; r < o.reps; r++) {
      enc_t.push(timeOnce(() => codec.encode(src, enc, o.blocks)));
      dec_t.push(timeOnce(() => codec.decode(enc, decoded, o.blocks)));
      cpy_t.push(timeOnce(() => copy.set(decoded)));
      aenc_t.push(await timeAsync(() => codec.encodeAsync(src, enc, o.blocks)));
      adec_t.push(await timeAsync(() => codec.decodeAsync(enc, decoded, o.blocks)));
      // The scalar encoder is slow: a third of the samples tell its speed well enough.
      if (r % 3 === 0) {
        scalar_t.push(timeOnce(() => codec.encode(src, enc, o.blocks, { isa: 'scalar' })));
      }
    }
    const gb = src.length / 1e9;
    const decodeGBps = gb / median(dec_t);
    const memcpyGBps = gb / median(cpy_t);
    speed.push({
      codec: c.name,
      decodedBlockBytes: codec.decodedBytes,
      encodedBlockBytes: codec.encodedBytes,
      ratio: codec.encodedBytes / codec.decodedBytes,
      encodeGBps: gb / median(enc_t),
      encodeScalarGBps: gb / median(scalar_t),
      encodeAsyncGBps: gb / median(aenc_t),
      decodeAsyncGBps: gb / median(adec_t),
      decodeGBps,
      memcpyGBps,
      decodeVsMemcpy: decodeGBps / memcpyGBps,
    });
  }
  return {
    options: o,
    isa: codecIsa(),
    threads: codecThreads(),
    speed,
    accuracy: accuracyTable(o),
    notes: [
      'one core, synchronous calls, unless marked async; GB/s of decoded bytes; memcpy is TypedArray.set of the same decoded bytes',
      `async: encodeAsync/decodeAsync, each pass of ${o.blocks} blocks split across ${codecThreads()} codec threads`,
      'accuracy on synthetic Gaussian KV with 4 outlier key channels per head (magnitude ~12); perplexity was not measured',
    ],
  };
}

function accuracyTable(o: CodecBenchOptions): CodecAccuracyRow[] {
  const shape = { layers: o.accuracyLayers, tokens: o.tokens, heads: o.heads, dim: o.dim };
  const layout = {
    dtype: o.dtype,
    numLayers: shape.layers,
    blockTokens: o.tokens,
    kvHeads: o.heads,
    headDim: o.dim,
  };
  const B = o.accuracyBlocks;
  const bytes = toBytes(syntheticKv(shape, B, 2), o.dtype);
  const x = fromBytes(bytes, o.dtype); // the stored values are the reference
  const rand = seededRandom(3);
  const rows: CodecAccuracyRow[] = [];
  for (const c of BENCH_CODECS) {
    const codec = BlockCodec.open(c.spec(o.group), layout);
    const enc = new Uint8Array(codec.encodedBytes * B);
    codec.encode(bytes, enc, B);
    const out = new Uint8Array(bytes.length);
    codec.decode(enc, out, B);
    const y = fromBytes(out, o.dtype);
    rows.push(compare(shape, B, o.queries, x, y, c.name, rand));
  }
  return rows;
}

/** Element index of (block, layer, kv, token, head, dim) in consecutive NHD blocks. */
function index(
  s: { layers: number; tokens: number; heads: number; dim: number },
  b: number,
  l: number,
  kv: number,
  t: number,
  h: number,
): number {
  return ((((b * s.layers + l) * 2 + kv) * s.tokens + t) * s.heads + h) * s.dim;
}

function compare(
  s: { layers: number; tokens: number; heads: number; dim: number },
  B: number,
  queries: number,
  x: Float32Array,
  y: Float32Array,
  name: string,
  rand: () => number,
): CodecAccuracyRow {
  const se = [0, 0];
  const ss = [0, 0];
  let maxAbs = 0;
  let amax = 0;
  const slab = s.tokens * s.heads * s.dim;
  for (let i = 0; i < x.length; i++) {
    const kv = Math.floor(i / slab) % 2;
    const a = x[i] as number;
    const e = (y[i] as number) - a;
    se[kv]! += e * e;
    ss[kv]! += a * a;
    maxAbs = Math.max(maxAbs, Math.abs(e));
    amax = Math.max(amax, Math.abs(a));
  }
  // Attention per (layer, head): the blocks' tokens are one context of N = B × tokens.
  const N = B * s.tokens;
  const D = s.dim;
  const errs: number[] = [];
  const scores = new Float64Array(N);
  const attend = (kv: Float32Array, q: Float64Array, l: number, h: number): Float64Array => {
    let mx = -Infinity;
    for (let n = 0; n < N; n++) {
      const at = index(s, Math.floor(n / s.tokens), l, 0, n % s.tokens, h);
      let dot = 0;
      for (let d = 0; d < D; d++) dot += (q[d] as number) * (kv[at + d] as number);
      scores[n] = dot / Math.sqrt(D);
      mx = Math.max(mx, scores[n] as number);
    }
    let z = 0;
    for (let n = 0; n < N; n++) z += scores[n] = Math.exp((scores[n] as number) - mx);
    const o = new Float64Array(D);
    for (let n = 0; n < N; n++) {
      const at = index(s, Math.floor(n / s.tokens), l, 1, n % s.tokens, h);
      const w = (scores[n] as number) / z;
      for (let d = 0; d < D; d++) o[d]! += w * (kv[at + d] as number);
    }
    return o;
  };
  for (let l = 0; l < s.layers; l++)
    for (let h = 0; h < s.heads; h++)
      for (let qi = 0; qi < queries; qi++) {
        const q = new Float64Array(D);
        for (let d = 0; d < D; d++) q[d] = gaussian(rand);
        const a = attend(x, q, l, h);
        const b = attend(y, q, l, h);
        let num = 0;
        let den = 0;
        for (let d = 0; d < D; d++) {
          num += ((a[d] as number) - (b[d] as number)) ** 2;
          den += (a[d] as number) ** 2;
        }
        errs.push(Math.sqrt(num / den));
      }
  return {
    codec: name,
    kRelRms: Math.sqrt((se[0] as number) / (ss[0] as number)),
    vRelRms: Math.sqrt((se[1] as number) / (ss[1] as number)),
    maxAbsErr: maxAbs,
    maxRelToAmax: maxAbs / amax,
    attnRelErrMean: errs.reduce((p, c) => p + c, 0) / errs.length,
    attnRelErrMax: Math.max(...errs),
  };
}

const f = (x: number, digits = 2): string => x.toFixed(digits);
const e = (x: number): string => x.toExponential(2);

/** Markdown tables (docs/codecs.md takes them as printed). */
export function formatCodecBench(r: CodecBenchReport): string {
  const o = r.options;
  const lines = [
    `KV ${o.dtype}, ${o.layers} layers × ${o.tokens} tokens × ${o.heads} heads × ${o.dim} dim (block ${r.speed[0]?.decodedBlockBytes ?? 0} B), ${o.blocks} blocks a pass, ${o.reps} reps, encode and decode path ${r.isa}, one core (async: ${r.threads} threads)`,
    '',
    `| codec | bytes/block | ratio | encode GB/s | encode scalar GB/s | decode GB/s | memcpy GB/s | decode / memcpy | encode async ×${r.threads} | decode async ×${r.threads} |`,
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...r.speed.map(
      (s) =>
        `| ${s.codec} | ${s.encodedBlockBytes} | ${f(s.ratio, 3)} | ${f(s.encodeGBps)} | ${f(s.encodeScalarGBps)} | ${f(s.decodeGBps)} | ${f(s.memcpyGBps)} | ${f(s.decodeVsMemcpy)} | ${f(s.encodeAsyncGBps)} | ${f(s.decodeAsyncGBps)} |`,
    ),
    '',
    `Accuracy: ${o.accuracyLayers} layers, ${o.accuracyBlocks} blocks (${o.accuracyBlocks * o.tokens}-token context), ${o.queries} random queries per head`,
    '',
    '| codec | K rel. RMS | V rel. RMS | max abs err | max err / max abs | attn rel. err mean | attn rel. err max |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...r.accuracy.map(
      (a) =>
        `| ${a.codec} | ${e(a.kRelRms)} | ${e(a.vRelRms)} | ${e(a.maxAbsErr)} | ${e(a.maxRelToAmax)} | ${e(a.attnRelErrMean)} | ${e(a.attnRelErrMax)} |`,
    ),
    '',
    ...r.notes.map((n) => `- ${n}`),
  ];
  return `${lines.join('\n')}\n`;
}

export function codecBenchJson(r: CodecBenchReport): string {
  return `${JSON.stringify({ bench: 'codec', ...r }, null, 2)}\n`;
}
