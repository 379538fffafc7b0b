/**
 * The codec --llama bench reads K and V out of llama.cpp's sequence state (llama-kv.ts). Checked
 * here against the state-format module's own block packing (cutBlocks/buildSeqState, which the
 * llama restore tests hold to the engine), for plain and transposed V: every element lands at its
 * (layer, K/V, token, head, dim), and scatter writes exactly what gather read.
 */
import { describe, expect, it } from 'vitest';

import { halfToFloat } from '../../lib/apps/bench/kv-values.js';
import { at, gather, scatter, type Shape } from '../../lib/apps/bench/llama-kv.js';
import { buildSeqState, parseSeqState, type StateLayout } from '../../lib/llama/state-format.js';

const L = 3;
const H = 2;
const D = 4;
const B = 4;
const BLOCKS = 3;

function layoutOf(vTrans: boolean): StateLayout {
  const row = H * D * 2; // f16
  return {
    vTrans,
    layers: Array.from({ length: L }, () => ({
      kType: 1,
      kRow: row,
      vType: 1,
      vRow: row,
      vEl: vTrans ? 2 : 0,
      vEmbd: vTrans ? H * D : 0,
    })),
  };
}

/** The value of (block, layer, kv, token, channel) in cutBlocks' packing of the same state. */
function packed(
  blocks: Buffer,
  vTrans: boolean,
  b: number,
  l: number,
  kv: number,
  t: number,
  ch: number,
): number {
  const row = H * D * 2;
  const blockBytes = 2 * L * B * row;
  const base = b * blockBytes + (kv * L + l) * B * row;
  const off = kv === 1 && vTrans ? base + (ch * B + t) * 2 : base + t * row + ch * 2;
  return halfToFloat(blocks.readUInt16LE(off));
}

describe('llama-kv: the state KV as kvtier blocks', () => {
  for (const vTrans of [false, true]) {
    it(`gathers every element in place and scatters it back (V ${vTrans ? 'transposed' : 'by row'})`, () => {
      const layout = layoutOf(vTrans);
      const n = B * BLOCKS;
      // Distinct finite f16 values: 0x3c00 + i stays in [1, 2) for i < 1024.
      const blocks = Buffer.alloc(BLOCKS * 2 * L * B * H * D * 2);
      for (let i = 0; i < blocks.length / 2; i++) blocks.writeUInt16LE(0x3c00 + (i % 1024), i * 2);
      const tokens = Array.from({ length: n }, (_, i) => 3 + i);
      const state = parseSeqState(buildSeqState(layout, 1, tokens, n, blocks, B));
      expect(state.layout!.vTrans).toBe(vTrans);
      const s: Shape = { layers: L, tokens: B, heads: H, dim: D };
      const x = gather(state, s, BLOCKS);
      expect(x.length).toBe(blocks.length / 2);
      for (let b = 0; b < BLOCKS; b++)
        for (let l = 0; l < L; l++)
          for (let kv = 0; kv < 2; kv++)
            for (let t = 0; t < B; t++)
              for (let h = 0; h < H; h++)
                for (let d = 0; d < D; d++) {
                  const want = packed(blocks, vTrans, b, l, kv, t, h * D + d);
                  expect(x[at(s, b, l, kv, t, h) + d]).toBe(want);
                }
      // Written back unchanged, the state is the same bytes; changed, exactly those values move.
      const bytes = new Uint8Array(x.length * 2);
      const view = new DataView(bytes.buffer);
      // The gathered values back to f16: all lie in [1, 2), in steps of 2^-10.
      for (let i = 0; i < x.length; i++) {
        view.setUint16(i * 2, 0x3c00 + Math.round((x[i]! - 1) * 1024), true);
      }
      expect(scatter(state, s, BLOCKS, bytes).equals(state.buf)).toBe(true);
      const changed = Uint8Array.from(bytes);
      const i = at(s, 1, 2, 1, 3, 1) + 2; // block 1, layer 2, V, token 3, head 1, dim 2
      new DataView(changed.buffer).setUint16(i * 2, 0x4000, true); // 2.0
      const y = gather(parseSeqState(scatter(state, s, BLOCKS, changed)), s, BLOCKS);
      expect(y[i]).toBe(2);
      let diff = 0;
      for (let j = 0; j < x.length; j++) if (y[j] !== x[j]) diff++;
      expect(diff).toBe(1);
    });
  }
});
