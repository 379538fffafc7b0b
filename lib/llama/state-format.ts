/**
 * llama.cpp's sequence-state file (llama_state_seq_save_file, LLAMA_STATE_SEQ_VERSION 3, as
 * node-llama-cpp 3.21's bundled llama.cpp writes it), cut into fixed-token blocks and rebuilt.
 *
 *   u32 magic 'ggsq' · u32 version 3 · u32 n_tokens · i32 tokens[n_tokens]
 *   u32 n_stream · per stream: u32 cell_count, then when cells:
 *     per cell: i32 pos · u32 n_seq_id (1) · i32 seq_id
 *     u32 v_trans · u32 n_layer
 *     per layer: i32 k_type · u64 k_row_bytes · K rows [cell_count][k_row_bytes]
 *     v_trans 0, per layer: i32 v_type · u64 v_row_bytes · V rows [cell_count][v_row_bytes]
 *     v_trans 1, per layer: i32 v_type · u32 v_el_bytes · u32 n_embd_v · V [n_embd_v][cell_count][v_el]
 *
 * Every layer's K (and V) holds one row (or one element per V channel) per cell, so the state of
 * tokens [a, b) is a set of byte ranges per layer: it cuts into token blocks. A block is packed as
 * K of every layer (its B rows), then V of every layer (B rows, or per channel B elements), so
 * the blocks of a prefix are all that is needed to write a state file for any shorter prefix.
 */
import { KvtierError } from '../core/errors.js';

export const STATE_MAGIC = 0x67677371; // 'ggsq'
export const STATE_VERSION = 3;

export interface LayerLayout {
  kType: number;
  /** Bytes of one cell's K in this layer. */
  kRow: number;
  vType: number;
  /** Bytes of one cell's V in this layer (vEl * vEmbd when transposed). */
  vRow: number;
  /** Transposed V only: bytes per element and channels. */
  vEl: number;
  vEmbd: number;
}

export interface StateLayout {
  vTrans: boolean;
  layers: LayerLayout[];
}

export interface SeqState {
  tokens: number[];
  /** KV streams of the context that wrote it (one per sequence unless the cache is unified). */
  nStream: number;
  cells: number;
  /** Undefined when the sequence holds no cells. */
  layout: StateLayout | undefined;
  /** Where each layer's K and V data start in the file. */
  kAt: number[];
  vAt: number[];
  buf: Buffer;
}

/** Bytes of all layers' K and V for one token. */
export function tokenBytes(layout: StateLayout): number {
  return layout.layers.reduce((n, l) => n + l.kRow + l.vRow, 0);
}

export function sameLayout(a: StateLayout, b: StateLayout): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function corrupt(what: string): KvtierError {
  return new KvtierError('KVTIER_CORRUPT', `llama sequence state: ${what}`);
}

function unsupported(what: string): KvtierError {
  return new KvtierError('KVTIER_NOT_AVAILABLE', `llama sequence state cannot be cut: ${what}`);
}

/** Reads a state file; refuses (KVTIER_NOT_AVAILABLE) a state whose cells are not tokens 0..n-1. */
export function parseSeqState(buf: Buffer): SeqState {
  let at = 0;
  const need = (n: number): void => {
    if (at + n > buf.length) throw corrupt(`truncated at byte ${at}`);
  };
  const u32 = (): number => {
    need(4);
    const v = buf.readUInt32LE(at);
    at += 4;
    return v;
  };
  const i32 = (): number => {
    need(4);
    const v = buf.readInt32LE(at);
    at += 4;
    return v;
  };
  const u64 = (): number => {
    need(8);
    const v = buf.readBigUInt64LE(at);
    at += 8;
    if (v > BigInt(buf.length)) throw corrupt('row size larger than the file');
    return Number(v);
  };
  if (u32() !== STATE_MAGIC) throw corrupt('not a sequence state (magic)');
  const version = u32();
  if (version !== STATE_VERSION) throw unsupported(`version ${version}, not ${STATE_VERSION}`);
  const nTokens = u32();
  need(nTokens * 4);
  const tokens: number[] = new Array<number>(nTokens);
  for (let i = 0; i < nTokens; i++) tokens[i] = i32();
  // One stream per sequence unless the cache is unified; a sequence's cells are in one of them.
  const nStream = u32();
  if (nStream < 1 || nStream > 65536) throw corrupt(`${nStream} streams`);
  let cells = 0;
  let stream = 0;
  while (stream < nStream && (cells = u32()) === 0) stream++;
  if (cells === 0) {
    if (at !== buf.length) throw corrupt('bytes after an empty state');
    return { tokens, nStream, cells, layout: undefined, kAt: [], vAt: [], buf };
  }
  if (cells !== nTokens) throw unsupported(`${cells} cells for ${nTokens} tokens`);
  for (let i = 0; i < cells; i++) {
    const pos = i32();
    const nSeq = u32();
    i32(); // the sequence id: a load puts cells in its own sequence
    if (pos !== i || nSeq !== 1) throw unsupported(`cell ${i} holds position ${pos}`);
  }
  const vTrans = u32();
  const nLayer = u32();
  if (vTrans > 1 || nLayer === 0 || nLayer > 4096) throw corrupt('bad layer header');
  const layers: LayerLayout[] = [];
  const kAt: number[] = [];
  const vAt: number[] = [];
  for (let l = 0; l < nLayer; l++) {
    const kType = i32();
    const kRow = u64();
    kAt.push(at);
    need(kRow * cells);
    at += kRow * cells;
    layers.push({ kType, kRow, vType: -1, vRow: 0, vEl: 0, vEmbd: 0 });
  }
  for (const layer of layers) {
    layer.vType = i32();
    if (vTrans) {
      layer.vEl = u32();
      layer.vEmbd = u32();
      layer.vRow = layer.vEl * layer.vEmbd;
    } else {
      layer.vRow = u64();
    }
    vAt.push(at);
    need(layer.vRow * cells);
    at += layer.vRow * cells;
  }
  for (stream++; stream < nStream; stream++) {
    if (u32() !== 0) throw unsupported('cells in more than one stream');
  }
  if (at !== buf.length) throw unsupported(`${buf.length - at} bytes past the last layer`);
  return { tokens, nStream, cells, layout: { vTrans: vTrans === 1, layers }, kAt, vAt, buf };
}

/**
 * Packs blocks [first, first + count) of B tokens each into dst (count * B * tokenBytes bytes).
 * Only whole blocks: the state must hold (first + count) * B cells.
 */
export function cutBlocks(
  state: SeqState,
  first: number,
  count: number,
  blockTokens: number,
  dst: Buffer,
): void {
  const layout = state.layout;
  if (!layout || (first + count) * blockTokens > state.cells) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'cutBlocks: the state does not hold those blocks');
  }
  const B = blockTokens;
  const blockBytes = B * tokenBytes(layout);
  const src = state.buf;
  const cells = state.cells;
  for (let b = 0; b < count; b++) {
    const c0 = (first + b) * B;
    let o = b * blockBytes;
    layout.layers.forEach((l, i) => {
      o += src.copy(dst, o, state.kAt[i]! + c0 * l.kRow, state.kAt[i]! + (c0 + B) * l.kRow);
    });
    layout.layers.forEach((l, i) => {
      const base = state.vAt[i]!;
      if (!layout.vTrans) {
        o += src.copy(dst, o, base + c0 * l.vRow, base + (c0 + B) * l.vRow);
        return;
      }
      for (let j = 0; j < l.vEmbd; j++) {
        const s = base + (j * cells + c0) * l.vEl;
        o += src.copy(dst, o, s, s + B * l.vEl);
      }
    });
  }
}

/**
 * Writes the state file of the first n tokens from blocks (block i at i * blockBytes), which must
 * hold ceil(n / B) blocks. nStream must be the loading context's: a load puts the cells in the
 * stream of its own sequence, whichever stream they were written under.
 */
export function buildSeqState(
  layout: StateLayout,
  nStream: number,
  tokens: ArrayLike<number>,
  n: number,
  blocks: Uint8Array,
  blockTokens: number,
): Buffer {
  const B = blockTokens;
  const per = tokenBytes(layout);
  const blockBytes = B * per;
  const nBlocks = Math.ceil(n / B);
  if (n < 1 || tokens.length < n || blocks.length < nBlocks * blockBytes) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'buildSeqState: not enough tokens or blocks');
  }
  const nl = layout.layers.length;
  const head = 4 * 3 + 4 * n + 4 * (1 + nStream) + 12 * n + 8;
  const layerHeads = nl * 24; // K: type and row size; V: type and row size, or type, element size, channels
  const out = Buffer.allocUnsafe(head + layerHeads + per * n);
  const src = Buffer.from(blocks.buffer, blocks.byteOffset, blocks.byteLength);
  let o = 0;
  o = out.writeUInt32LE(STATE_MAGIC, o);
  o = out.writeUInt32LE(STATE_VERSION, o);
  o = out.writeUInt32LE(n, o);
  for (let i = 0; i < n; i++) o = out.writeInt32LE(tokens[i]!, o);
  o = out.writeUInt32LE(nStream, o);
  o = out.writeUInt32LE(n, o); // cells of the first stream; the others are empty
  for (let i = 0; i < n; i++) {
    o = out.writeInt32LE(i, o);
    o = out.writeUInt32LE(1, o);
    o = out.writeInt32LE(0, o);
  }
  o = out.writeUInt32LE(layout.vTrans ? 1 : 0, o);
  o = out.writeUInt32LE(nl, o);
  // Offsets of each layer's K and V inside a block.
  const kOff: number[] = [];
  const vOff: number[] = [];
  let off = 0;
  for (const l of layout.layers) {
    kOff.push(off);
    off += B * l.kRow;
  }
  for (const l of layout.layers) {
    vOff.push(off);
    off += B * l.vRow;
  }
  const rows = (b: number): number => Math.min(B, n - b * B);
  layout.layers.forEach((l, i) => {
    o = out.writeInt32LE(l.kType, o);
    o = out.writeBigUInt64LE(BigInt(l.kRow), o);
    for (let b = 0; b < nBlocks; b++) {
      const s = b * blockBytes + kOff[i]!;
      o += src.copy(out, o, s, s + rows(b) * l.kRow);
    }
  });
  layout.layers.forEach((l, i) => {
    o = out.writeInt32LE(l.vType, o);
    if (!layout.vTrans) {
      o = out.writeBigUInt64LE(BigInt(l.vRow), o);
      for (let b = 0; b < nBlocks; b++) {
        const s = b * blockBytes + vOff[i]!;
        o += src.copy(out, o, s, s + rows(b) * l.vRow);
      }
      return;
    }
    o = out.writeUInt32LE(l.vEl, o);
    o = out.writeUInt32LE(l.vEmbd, o);
    for (let j = 0; j < l.vEmbd; j++) {
      for (let b = 0; b < nBlocks; b++) {
        const s = b * blockBytes + vOff[i]! + j * B * l.vEl;
        o += src.copy(out, o, s, s + rows(b) * l.vEl);
      }
    }
  });
  for (let i = 1; i < nStream; i++) o = out.writeUInt32LE(0, o);
  if (o !== out.length) throw new Error(`buildSeqState wrote ${o} of ${out.length} bytes`);
  return out;
}
