/**
 * KV read out of and written back into llama.cpp's saved sequence state (lib/llama/state-format.ts)
 * as consecutive kvtier blocks in NHD order: per block and layer, K's [token][head][dim], then V's.
 */
import { KvtierError } from '../../index.js';
import type { SeqState } from '../../llama/index.js';
import { halfToFloat } from './kv-values.js';

export interface Shape {
  layers: number;
  tokens: number;
  heads: number;
  dim: number;
}

/** Element offset of (block, layer, kv, token, head) in consecutive NHD blocks. */
export const at = (s: Shape, b: number, l: number, kv: number, t: number, h: number): number =>
  ((((b * s.layers + l) * 2 + kv) * s.tokens + t) * s.heads + h) * s.dim;

/**
 * Where element (layer, kv, cell, channel) of the state lies, in bytes, and its type's width.
 * K rows hold [head][dim] per cell; V the same, or per channel all cells when transposed.
 */
function stateOffsets(state: SeqState): {
  offset: (l: number, kv: number, cell: number, ch: number) => number;
  width: number;
  type: number;
} {
  const layout = state.layout!;
  const type = layout.layers[0]!.kType;
  const width = type === 1 ? 2 : 4;
  for (const l of layout.layers) {
    if (l.kType !== type || l.vType !== type || (type !== 0 && type !== 1)) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        'codec --llama reads f16 or f32 KV caches of one type in every layer',
      );
    }
  }
  const offset = (l: number, kv: number, cell: number, ch: number): number => {
    const layer = layout.layers[l]!;
    if (kv === 0) return state.kAt[l]! + cell * layer.kRow + ch * width;
    if (layout.vTrans) return state.vAt[l]! + (ch * state.cells + cell) * layer.vEl;
    return state.vAt[l]! + cell * layer.vRow + ch * width;
  };
  return { offset, width, type };
}

/** The state's first `blocks` blocks as NHD values. */
export function gather(state: SeqState, s: Shape, blocks: number): Float32Array {
  const { offset, type } = stateOffsets(state);
  const buf = state.buf;
  const out = new Float32Array(blocks * s.layers * 2 * s.tokens * s.heads * s.dim);
  const HD = s.heads * s.dim;
  for (let b = 0; b < blocks; b++)
    for (let l = 0; l < s.layers; l++)
      for (let kv = 0; kv < 2; kv++)
        for (let t = 0; t < s.tokens; t++) {
          const o = at(s, b, l, kv, t, 0);
          for (let ch = 0; ch < HD; ch++) {
            const p = offset(l, kv, b * s.tokens + t, ch);
            out[o + ch] = type === 1 ? halfToFloat(buf.readUInt16LE(p)) : buf.readFloatLE(p);
          }
        }
  return out;
}

/** A copy of the state file with its first blocks replaced by `bytes` (NHD, the state's type). */
export function scatter(state: SeqState, s: Shape, blocks: number, bytes: Uint8Array): Buffer {
  const { offset, width } = stateOffsets(state);
  const out = Buffer.from(state.buf);
  const src = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const HD = s.heads * s.dim;
  for (let b = 0; b < blocks; b++)
    for (let l = 0; l < s.layers; l++)
      for (let kv = 0; kv < 2; kv++)
        for (let t = 0; t < s.tokens; t++) {
          const o = at(s, b, l, kv, t, 0) * width;
          for (let ch = 0; ch < HD; ch++) {
            src.copy(
              out,
              offset(l, kv, b * s.tokens + t, ch),
              o + ch * width,
              o + (ch + 1) * width,
            );
          }
        }
  return out;
}
