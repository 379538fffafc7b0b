/**
 * A GGUF writer for llama-architecture models with random weights: what the tests and the
 * benchmark load into a real engine where nothing can download weights. The tokens mean nothing
 * (an SPM vocabulary of special, byte and filler tokens); callers feed token ids directly.
 *
 * Format (llama.cpp ggml/include/gguf.h, version 3, little-endian): magic "GGUF", u32 version,
 * u64 tensor count, u64 metadata count, metadata (key string, u32 type, value), tensor infos
 * (name, u32 dims, u64 ne[dims], u32 ggml type, u64 offset into the data), padding to the
 * alignment, tensor data (each tensor aligned).
 */
import { closeSync, openSync, renameSync, writeSync } from 'node:fs';

import { KvtierError } from '../core/errors.js';

export interface LlamaModelSpec {
  /** Hidden size. */
  embd: number;
  layers: number;
  heads: number;
  /** Key/value heads (grouped-query attention); default `heads`. */
  kvHeads?: number;
  /** Feed-forward size. */
  ff: number;
  /** Vocabulary size, at least 260 (3 special tokens, 256 byte tokens, filler). */
  vocab: number;
  /** Trained context length written to the metadata. */
  contextLength: number;
  /** Weight type of the matrices (norms are always f32). Default 'f16'. */
  dtype?: 'f32' | 'f16';
  /** Seed of the weights: another seed is another model with the same shape. */
  seed?: number;
  name?: string;
}

/** Sized to load and prefill in well under a second on one shared core. */
export const TINY_MODEL: LlamaModelSpec = {
  embd: 64,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  ff: 128,
  vocab: 320,
  contextLength: 4096,
  dtype: 'f32',
};

/** The benchmark's model: big enough that prefill costs something real, small enough for 2 cores. */
export const BENCH_MODEL: LlamaModelSpec = {
  embd: 256,
  layers: 8,
  heads: 4,
  kvHeads: 4,
  ff: 704,
  vocab: 2048,
  contextLength: 32768,
  dtype: 'f16',
};

const enum T {
  U32 = 4,
  I32 = 5,
  F32 = 6,
  STRING = 8,
  ARRAY = 9,
}

const GGML_F32 = 0;
const GGML_F16 = 1;
const ALIGN = 32;

type Value =
  | { t: T.U32 | T.I32 | T.F32; v: number }
  | { t: T.STRING; v: string }
  | { t: T.ARRAY; of: T.STRING; v: string[] }
  | { t: T.ARRAY; of: T.F32 | T.I32; v: number[] };

/** Appends little-endian values to a growing buffer. */
class Out {
  private buf = Buffer.alloc(1 << 16);
  length = 0;
  private room(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  u32(v: number): void {
    this.room(4);
    this.length = this.buf.writeUInt32LE(v, this.length);
  }
  i32(v: number): void {
    this.room(4);
    this.length = this.buf.writeInt32LE(v, this.length);
  }
  f32(v: number): void {
    this.room(4);
    this.length = this.buf.writeFloatLE(v, this.length);
  }
  u64(v: number): void {
    this.room(8);
    this.length = this.buf.writeBigUInt64LE(BigInt(v), this.length);
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.room(b.length);
    this.length += b.copy(this.buf, this.length);
  }
  pad(align: number): void {
    const n = (align - (this.length % align)) % align;
    this.room(n);
    this.buf.fill(0, this.length, this.length + n);
    this.length += n;
  }
  bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

function writeValue(o: Out, value: Value): void {
  o.u32(value.t);
  if (value.t === T.STRING) return o.str(value.v);
  if (value.t === T.ARRAY) {
    o.u32(value.of);
    o.u64(value.v.length);
    for (const x of value.v) {
      if (value.of === T.STRING) o.str(x as string);
      else if (value.of === T.F32) o.f32(x as number);
      else o.i32(x as number);
    }
    return;
  }
  if (value.t === T.U32) o.u32(value.v);
  else if (value.t === T.I32) o.i32(value.v);
  else o.f32(value.v);
}

/** IEEE half from a float (round to nearest; the weights are small, so no overflow care). */
function toHalf(f: number): number {
  const b = new Float32Array([f]);
  const x = new Uint32Array(b.buffer)[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = ((x >>> 23) & 0xff) - 127 + 15;
  let mant = x & 0x7fffff;
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant |= 0x800000;
    return sign | ((mant >> (14 - exp)) + ((mant >> (13 - exp)) & 1));
  }
  if (exp >= 31) return sign | 0x7c00;
  const h = sign | (exp << 10) | (mant >> 13);
  return h + ((mant >> 12) & 1);
}

interface TensorSpec {
  name: string;
  ne: number[];
  /** 'one': a norm weight (all ones); 'rand': uniform in [-scale, scale]. */
  fill: 'one' | 'rand';
  f32: boolean;
}

function tensorsOf(s: LlamaModelSpec): TensorSpec[] {
  const f32 = (s.dtype ?? 'f16') === 'f32';
  const headDim = s.embd / s.heads;
  const kv = (s.kvHeads ?? s.heads) * headDim;
  const t: TensorSpec[] = [
    { name: 'token_embd.weight', ne: [s.embd, s.vocab], fill: 'rand', f32 },
    { name: 'output_norm.weight', ne: [s.embd], fill: 'one', f32: true },
    { name: 'output.weight', ne: [s.embd, s.vocab], fill: 'rand', f32 },
  ];
  for (let i = 0; i < s.layers; i++) {
    const p = `blk.${i}.`;
    t.push(
      { name: `${p}attn_norm.weight`, ne: [s.embd], fill: 'one', f32: true },
      { name: `${p}attn_q.weight`, ne: [s.embd, s.embd], fill: 'rand', f32 },
      { name: `${p}attn_k.weight`, ne: [s.embd, kv], fill: 'rand', f32 },
      { name: `${p}attn_v.weight`, ne: [s.embd, kv], fill: 'rand', f32 },
      { name: `${p}attn_output.weight`, ne: [s.embd, s.embd], fill: 'rand', f32 },
      { name: `${p}ffn_norm.weight`, ne: [s.embd], fill: 'one', f32: true },
      { name: `${p}ffn_gate.weight`, ne: [s.embd, s.ff], fill: 'rand', f32 },
      { name: `${p}ffn_down.weight`, ne: [s.ff, s.embd], fill: 'rand', f32 },
      { name: `${p}ffn_up.weight`, ne: [s.embd, s.ff], fill: 'rand', f32 },
    );
  }
  return t;
}

function checkSpec(s: LlamaModelSpec): void {
  const ints: (keyof LlamaModelSpec)[] = [
    'embd',
    'layers',
    'heads',
    'ff',
    'vocab',
    'contextLength',
  ];
  for (const k of ints) {
    const v = s[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', `model ${k} must be a positive integer`);
    }
  }
  const kvHeads = s.kvHeads ?? s.heads;
  if (s.embd % s.heads !== 0 || (s.embd / s.heads) % 2 !== 0 || s.heads % kvHeads !== 0) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      'embd must split into an even head size, and heads into kvHeads groups',
    );
  }
  if (s.vocab < 260) throw new KvtierError('KVTIER_BAD_ARGUMENT', 'vocab must be at least 260');
}

function metadata(s: LlamaModelSpec): [string, Value][] {
  const tokens: string[] = ['<unk>', '<s>', '</s>'];
  const types: number[] = [2, 3, 3]; // unknown, control, control
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(6); // byte
  }
  for (let i = tokens.length; i < s.vocab; i++) {
    tokens.push(`\u2581t${i}`);
    types.push(1); // normal
  }
  const scores = tokens.map((_, i) => -i);
  return [
    ['general.architecture', { t: T.STRING, v: 'llama' }],
    ['general.name', { t: T.STRING, v: s.name ?? 'kvtier-random' }],
    ['general.alignment', { t: T.U32, v: ALIGN }],
    ['llama.context_length', { t: T.U32, v: s.contextLength }],
    ['llama.embedding_length', { t: T.U32, v: s.embd }],
    ['llama.block_count', { t: T.U32, v: s.layers }],
    ['llama.feed_forward_length', { t: T.U32, v: s.ff }],
    ['llama.attention.head_count', { t: T.U32, v: s.heads }],
    ['llama.attention.head_count_kv', { t: T.U32, v: s.kvHeads ?? s.heads }],
    ['llama.rope.dimension_count', { t: T.U32, v: s.embd / s.heads }],
    ['llama.attention.layer_norm_rms_epsilon', { t: T.F32, v: 1e-5 }],
    ['llama.vocab_size', { t: T.U32, v: s.vocab }],
    ['tokenizer.ggml.model', { t: T.STRING, v: 'llama' }],
    ['tokenizer.ggml.tokens', { t: T.ARRAY, of: T.STRING, v: tokens }],
    ['tokenizer.ggml.scores', { t: T.ARRAY, of: T.F32, v: scores }],
    ['tokenizer.ggml.token_type', { t: T.ARRAY, of: T.I32, v: types }],
    ['tokenizer.ggml.bos_token_id', { t: T.U32, v: 1 }],
    ['tokenizer.ggml.eos_token_id', { t: T.U32, v: 2 }],
    ['tokenizer.ggml.unknown_token_id', { t: T.U32, v: 0 }],
  ];
}

/** Writes the model to `path` (atomically: a temporary file renamed). Returns the file size. */
export function writeLlamaGguf(path: string, spec: LlamaModelSpec): number {
  checkSpec(spec);
  const tensors = tensorsOf(spec);
  const meta = metadata(spec);
  const head = new Out();
  head.u32(0x46554747); // "GGUF"
  head.u32(3);
  head.u64(tensors.length);
  head.u64(meta.length);
  for (const [k, v] of meta) {
    head.str(k);
    writeValue(head, v);
  }
  let offset = 0;
  const sizes: number[] = [];
  for (const t of tensors) {
    head.str(t.name);
    head.u32(t.ne.length);
    for (const n of t.ne) head.u64(n);
    head.u32(t.f32 ? GGML_F32 : GGML_F16);
    head.u64(offset);
    const bytes = t.ne.reduce((a, b) => a * b, 1) * (t.f32 ? 4 : 2);
    sizes.push(bytes);
    offset += Math.ceil(bytes / ALIGN) * ALIGN;
  }
  head.pad(ALIGN);

  // xorshift32: the same seed writes the same bytes on every machine.
  let state = (spec.seed ?? 1) >>> 0 || 1;
  const next = (): number => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 0x100000000;
  };
  const tmp = `${path}.${process.pid}.tmp`;
  const fd = openSync(tmp, 'w');
  let size = 0;
  try {
    size += writeSync(fd, head.bytes());
    tensors.forEach((t, i) => {
      const n = t.ne.reduce((a, b) => a * b, 1);
      // Scaled by fan-in so activations stay in range through the layers.
      const scale = 1 / Math.sqrt(t.ne[0]!);
      const data = Buffer.alloc(Math.ceil(sizes[i]! / ALIGN) * ALIGN);
      for (let j = 0; j < n; j++) {
        const v = t.fill === 'one' ? 1 : (next() * 2 - 1) * scale * 1.7;
        if (t.f32) data.writeFloatLE(v, j * 4);
        else data.writeUInt16LE(toHalf(v), j * 2);
      }
      size += writeSync(fd, data);
    });
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  return size;
}
