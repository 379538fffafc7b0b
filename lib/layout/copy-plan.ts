/**
 * Copy plans: which byte ranges of an engine's pool make up one kvtier block, in kvtier's packing
 * order, with adjacent ranges coalesced. A plan is built once per layout (a template relative to
 * block 0, with the block stride of each piece) and offset per block, so planning many blocks
 * costs one multiply-add per piece.
 *
 * Packing order of a kvtier block: layer-major; within a layer K then V; within each of those
 * `NHD` (tokens, then heads, then dim — the default) or `HND` (heads, then tokens, then dim).
 */
import { KvtierError } from '../core/errors.js';
import { checkBlockIndex, type KvLayout } from './kv-layout.js';
import { guard, oneOf, options as readOptions } from '../core/validate.js';

export type KvPacking = 'NHD' | 'HND';

export interface KvPlanOptions {
  /** Order of tokens and heads inside each (layer, K/V) slab of a kvtier block. Default 'NHD'. */
  packing?: KvPacking;
}

/** One contiguous copy: `length` bytes between the pool and a packed kvtier buffer. */
export interface KvSegment {
  /** Byte offset in the engine's pool (a device address on a GPU). */
  poolOffset: number;
  /** Byte offset in the packed buffer of kvtier blocks. */
  packedOffset: number;
  length: number;
}

/** Fields of one segment in the Float64Array that {@link KvCopyPlan.expand} returns. */
export const KV_SEGMENT_STRIDE = 3;

export class KvCopyPlan {
  readonly layout: KvLayout;
  readonly packing: KvPacking;
  /** Bytes of one kvtier block. */
  readonly blockBytes: number;
  // The template: piece i lies at poolBase[i] + block * blockStride[i] in the pool and at
  // packed[i] in the kvtier block.
  private readonly poolBase: Float64Array;
  private readonly blockStride: Float64Array;
  private readonly packed: Float64Array;
  private readonly lengths: Float64Array;

  /** @internal use {@link planKvCopy} */
  constructor(layout: KvLayout, packing: KvPacking) {
    this.layout = layout;
    this.packing = packing;
    this.blockBytes = layout.blockBytes;
    const eb = layout.dtypeBytes;
    const [outer, inner] =
      packing === 'NHD'
        ? [layout.blockTokens, layout.kvHeads]
        : [layout.kvHeads, layout.blockTokens];
    // A head's dim is one run when its elements are adjacent; otherwise each element is a piece.
    const dimRun = layout.planes.every((p) => p.dimStride === eb || layout.headDim === 1);
    const runs = dimRun ? 1 : layout.headDim;
    const runBytes = dimRun ? layout.headDim * eb : eb;
    const max = layout.planes.length * outer * inner * runs;
    const poolBase = new Float64Array(max);
    const blockStride = new Float64Array(max);
    const packed = new Float64Array(max);
    const lengths = new Float64Array(max);
    let n = 0;
    let at = 0;
    for (const p of layout.planes) {
      // With one block the block stride never applies; 0 lets pieces of different planes merge.
      const bs = layout.numBlocks === 1 ? 0 : p.blockStride;
      const [outerStride, innerStride] =
        packing === 'NHD' ? [p.tokenStride, p.headStride] : [p.headStride, p.tokenStride];
      for (let o = 0; o < outer; o++) {
        for (let i = 0; i < inner; i++) {
          for (let d = 0; d < runs; d++) {
            const src = p.offset + o * outerStride + i * innerStride + d * p.dimStride;
            const last = n - 1;
            if (
              n > 0 &&
              blockStride[last] === bs &&
              poolBase[last]! + lengths[last]! === src &&
              packed[last]! + lengths[last]! === at
            ) {
              lengths[last]! += runBytes;
            } else {
              poolBase[n] = src;
              blockStride[n] = bs;
              packed[n] = at;
              lengths[n] = runBytes;
              n++;
            }
            at += runBytes;
          }
        }
      }
    }
    this.poolBase = poolBase.slice(0, n);
    this.blockStride = blockStride.slice(0, n);
    this.packed = packed.slice(0, n);
    this.lengths = lengths.slice(0, n);
  }

  /** Segments one block takes (after coalescing). */
  get segmentCount(): number {
    return this.lengths.length;
  }

  /** The segments of engine block `block`, packed at offset 0. */
  segments(block: number): KvSegment[] {
    return KvCopyPlan.toSegments(this.expand([block]));
  }

  /**
   * The segments for many blocks: engine block `blocks[j]` ↔ packed bytes at
   * `packedOffset + j * blockBytes`. Segments adjacent in both the pool and the packed buffer
   * merge across blocks too. Returns `[poolOffset, packedOffset, length]` triples.
   */
  expand(blocks: readonly number[], packedOffset = 0): Float64Array {
    if (!Array.isArray(blocks)) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', 'blocks must be an array of block indices');
    }
    if (!Number.isSafeInteger(packedOffset) || packedOffset < 0) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `packed offset must be a non-negative integer, got ${packedOffset}`,
      );
    }
    const per = this.lengths.length;
    const out = new Float64Array(blocks.length * per * KV_SEGMENT_STRIDE);
    let n = 0;
    for (let j = 0; j < blocks.length; j++) {
      const b = checkBlockIndex(this.layout, blocks[j], `blocks[${j}]`);
      const base = packedOffset + j * this.blockBytes;
      for (let i = 0; i < per; i++) {
        const src = this.poolBase[i]! + b * this.blockStride[i]!;
        const dst = base + this.packed[i]!;
        const len = this.lengths[i]!;
        const last = (n - 1) * KV_SEGMENT_STRIDE;
        if (
          n > 0 &&
          out[last]! + out[last + 2]! === src &&
          out[last + 1]! + out[last + 2]! === dst
        ) {
          out[last + 2]! += len;
        } else {
          const at = n * KV_SEGMENT_STRIDE;
          out[at] = src;
          out[at + 1] = dst;
          out[at + 2] = len;
          n++;
        }
      }
    }
    return out.subarray(0, n * KV_SEGMENT_STRIDE);
  }

  /** Triples from {@link expand} as objects (for inspection and tests). */
  static toSegments(triples: Float64Array): KvSegment[] {
    const segments: KvSegment[] = [];
    for (let at = 0; at + 2 < triples.length; at += KV_SEGMENT_STRIDE) {
      segments.push({
        poolOffset: triples[at]!,
        packedOffset: triples[at + 1]!,
        length: triples[at + 2]!,
      });
    }
    return segments;
  }
}

const cache = new WeakMap<KvLayout, Map<KvPacking, KvCopyPlan>>();

/** The copy plan of a layout (built once per layout and packing, then reused). */
export function planKvCopy(layout: KvLayout, options: KvPlanOptions = {}): KvCopyPlan {
  const given = readOptions<KvPlanOptions>(options, 'options', ['packing']).packing;
  const packing = oneOf(given ?? 'NHD', 'packing', ['NHD', 'HND'] as const);
  if (
    typeof layout !== 'object' ||
    layout === null ||
    !guard('layout', () => Array.isArray(layout.planes))
  ) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'expected a layout from describeKvLayout()');
  }
  let plans = cache.get(layout);
  if (!plans) {
    plans = new Map();
    cache.set(layout, plans);
  }
  let plan = plans.get(packing);
  if (!plan) {
    plan = new KvCopyPlan(layout, packing);
    plans.set(packing, plan);
  }
  return plan;
}
