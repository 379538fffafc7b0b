/**
 * KV layouts: a small description of where an inference engine keeps its paged KV cache, so
 * kvtier can gather one engine block from every layer into one contiguous kvtier block and
 * scatter it back (see copy-plan.ts and docs/layouts.md).
 *
 * Conventions:
 * - Logical dimensions are `layer`, `kv` (0 = K, 1 = V), `block`, `token` (within a block),
 *   `head` (KV heads) and `dim` (the head dimension).
 * - **Offsets are in bytes** into a memory pool: on a GPU, device addresses; on the host, offsets
 *   into one buffer or Region.
 * - **Strides are in elements** of the layout's dtype, listed in the order of the form's shape,
 *   exactly as PyTorch's `tensor.stride()` returns them. Omitted strides mean a contiguous
 *   (row-major) tensor of that shape.
 */
import { KvtierError } from '../core/errors.js';
import { describe, guard } from '../core/validate.js';

export type KvDtype = 'fp16' | 'bf16' | 'fp8' | 'fp32';

/** Bytes per element of each dtype. */
export const kvDtypeBytes: Readonly<Record<KvDtype, number>> = {
  fp16: 2,
  bf16: 2,
  fp8: 1,
  fp32: 4,
};

export type KvDim = 'layer' | 'kv' | 'block' | 'token' | 'head' | 'dim';

export const kvDims: readonly KvDim[] = ['layer', 'kv', 'block', 'token', 'head', 'dim'];

/** One tensor of the engine's cache: where its element 0 lies and (optionally) its strides. */
export interface KvTensorRef {
  /** Byte offset (or device address) of the tensor's first element. */
  offset: number;
  /** Strides in elements, in the order of the form's shape; contiguous when omitted. */
  strides?: readonly number[];
}

/** The sizes every form shares. */
export interface KvShape {
  numLayers: number;
  /** Engine blocks (pages) per layer. */
  numBlocks: number;
  /** Tokens per engine block (vLLM `block_size`, SGLang `page_size`). */
  blockTokens: number;
  kvHeads: number;
  headDim: number;
  dtype: KvDtype;
}

/**
 * The forms an engine's cache can take:
 * - `separate`: per layer, one K and one V tensor, each `[blocks, tokens, heads, dim]`.
 * - `kv-first`: per layer, one tensor `[2, blocks, tokens, heads, dim]` (vLLM FlashAttention).
 * - `block-first`: per layer, one tensor `[blocks, 2, tokens, heads, dim]` (vLLM FlashInfer).
 * - `stacked`: all layers in one tensor whose shape is the six dimensions in `order`
 *   (default `['layer', 'kv', 'block', 'token', 'head', 'dim']`).
 */
export type KvLayoutSpec = KvShape &
  (
    | { form: 'separate'; layers: readonly { k: KvTensorRef; v: KvTensorRef }[] }
    | { form: 'kv-first'; layers: readonly KvTensorRef[] }
    | { form: 'block-first'; layers: readonly KvTensorRef[] }
    | { form: 'stacked'; order?: readonly KvDim[]; tensor: KvTensorRef }
  );

export type KvLayoutForm = KvLayoutSpec['form'];

/**
 * Where one layer's K (or V) lies, in bytes: element (block b, token t, head h, dim d) is at
 * `offset + b*blockStride + t*tokenStride + h*headStride + d*dimStride`.
 */
export interface KvPlane {
  readonly layer: number;
  readonly kv: 0 | 1;
  readonly offset: number;
  readonly blockStride: number;
  readonly tokenStride: number;
  readonly headStride: number;
  readonly dimStride: number;
}

/** A validated layout, normalised to one plane per (layer, K/V). */
export interface KvLayout extends Readonly<KvShape> {
  readonly form: KvLayoutForm;
  readonly dtypeBytes: number;
  /** Planes in packing order: layer 0 K, layer 0 V, layer 1 K, ... */
  readonly planes: readonly KvPlane[];
  /** Bytes of one kvtier block: 2 × layers × blockTokens × kvHeads × headDim × dtypeBytes. */
  readonly blockBytes: number;
  /** One past the highest byte any tensor of the layout touches: the pool must be this big. */
  readonly extent: number;
}

function bad(message: string): never {
  throw new KvtierError('KVTIER_BAD_ARGUMENT', `KV layout: ${message}`);
}

function positive(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    bad(`${name} must be a positive integer, got ${describe(value)}`);
  }
  return value;
}

function nonNegative(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    bad(`${name} must be a non-negative integer, got ${describe(value)}`);
  }
  return value;
}

/** The bytes of one kvtier block for these sizes. */
export function kvBlockBytes(shape: KvShape): number {
  if (typeof shape !== 'object' || shape === null) bad('expected a shape object');
  return guard('KV shape', () => blockBytesOf(shape));
}

function blockBytesOf(shape: KvShape): number {
  // Own keys only: 'constructor' or 'toString' are not dtypes.
  const bytes = Object.hasOwn(kvDtypeBytes, shape.dtype) ? kvDtypeBytes[shape.dtype] : undefined;
  if (bytes === undefined) bad(`unknown dtype ${describe(shape.dtype)}`);
  return (
    2 *
    positive(shape.numLayers, 'numLayers') *
    positive(shape.blockTokens, 'blockTokens') *
    positive(shape.kvHeads, 'kvHeads') *
    positive(shape.headDim, 'headDim') *
    bytes
  );
}

/** One tensor as the validator sees it: named dimensions with sizes and element strides. */
interface Tensor {
  name: string;
  offset: number;
  dims: readonly KvDim[];
  sizes: readonly number[];
  strides: readonly number[];
  /** The first layer and K/V index this tensor holds (its `layer`/`kv` dims start there). */
  layer0: number;
  kv0: 0 | 1;
}

function contiguous(sizes: readonly number[]): number[] {
  const strides = new Array<number>(sizes.length);
  let s = 1;
  for (let i = sizes.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= sizes[i] ?? 1;
  }
  return strides;
}

function tensorOf(
  name: string,
  ref: KvTensorRef | undefined,
  dims: readonly KvDim[],
  sizes: readonly number[],
  dtypeBytes: number,
  layer0: number,
  kv0: 0 | 1,
): Tensor {
  if (typeof ref !== 'object' || ref === null) bad(`${name} is missing`);
  const offset = nonNegative(ref.offset, `${name}.offset`);
  if (offset % dtypeBytes !== 0) {
    bad(`${name}.offset ${offset} is not aligned to the ${dtypeBytes}-byte element`);
  }
  let strides: number[];
  if (ref.strides === undefined) {
    strides = contiguous(sizes);
  } else {
    if (!Array.isArray(ref.strides) || ref.strides.length !== dims.length) {
      bad(`${name}.strides must list ${dims.length} strides (${dims.join(', ')})`);
    }
    strides = (ref.strides as readonly unknown[]).map((s, i) =>
      nonNegative(s, `${name}.strides[${i}] (${dims[i]})`),
    );
  }
  return { name, offset, dims, sizes, strides, layer0, kv0 };
}

/** Elements from the tensor's first to its last element, inclusive. */
function spanElements(t: Tensor): number {
  let span = 1;
  for (let i = 0; i < t.sizes.length; i++) span += (t.strides[i] ?? 0) * ((t.sizes[i] ?? 1) - 1);
  return span;
}

/**
 * Refuses a tensor whose elements could share memory. Dimensions of size 1 are ignored; the rest,
 * taken from the smallest stride up, must each step over everything the smaller ones span (the
 * condition every dense or padded tensor meets; exotic interleavings are refused too).
 */
function checkNoSelfOverlap(t: Tensor): void {
  const live = t.sizes
    .map((size, i) => ({ size, stride: t.strides[i] ?? 0, dim: t.dims[i] }))
    .filter((d) => d.size > 1)
    .sort((a, b) => a.stride - b.stride);
  let span = 1;
  for (const d of live) {
    if (d.stride < span) {
      bad(
        `${t.name}: stride ${d.stride} of dimension '${d.dim}' overlaps the ${span} elements ` +
          `the smaller strides span`,
      );
    }
    span += d.stride * (d.size - 1);
  }
}

function shapeOf(spec: KvLayoutSpec): KvShape {
  if (typeof spec !== 'object' || spec === null) bad('expected a layout description object');
  if (!Object.hasOwn(kvDtypeBytes, spec.dtype)) {
    bad(
      `dtype must be one of ${Object.keys(kvDtypeBytes).join(', ')}, got ${describe(spec.dtype)}`,
    );
  }
  return {
    numLayers: positive(spec.numLayers, 'numLayers'),
    numBlocks: positive(spec.numBlocks, 'numBlocks'),
    blockTokens: positive(spec.blockTokens, 'blockTokens'),
    kvHeads: positive(spec.kvHeads, 'kvHeads'),
    headDim: positive(spec.headDim, 'headDim'),
    dtype: spec.dtype,
  };
}

function perLayer<T>(layers: readonly T[] | undefined, numLayers: number): readonly T[] {
  if (!Array.isArray(layers)) bad('layers must be an array with one entry per layer');
  const list = layers as readonly T[];
  if (list.length !== numLayers) {
    bad(`layers lists ${list.length} entries but numLayers is ${numLayers}`);
  }
  return list;
}

function tensorsOf(spec: KvLayoutSpec, s: KvShape, eb: number): Tensor[] {
  const inner = [s.blockTokens, s.kvHeads, s.headDim];
  const innerDims: KvDim[] = ['token', 'head', 'dim'];
  switch (spec.form) {
    case 'separate':
      return perLayer(spec.layers, s.numLayers).flatMap((layer, l) => {
        if (typeof layer !== 'object' || layer === null) bad(`layers[${l}] is missing`);
        const dims: KvDim[] = ['block', ...innerDims];
        const sizes = [s.numBlocks, ...inner];
        return [
          tensorOf(`layers[${l}].k`, layer.k, dims, sizes, eb, l, 0),
          tensorOf(`layers[${l}].v`, layer.v, dims, sizes, eb, l, 1),
        ];
      });
    case 'kv-first':
      return perLayer(spec.layers, s.numLayers).map((ref, l) =>
        tensorOf(
          `layers[${l}]`,
          ref,
          ['kv', 'block', ...innerDims],
          [2, s.numBlocks, ...inner],
          eb,
          l,
          0,
        ),
      );
    case 'block-first':
      return perLayer(spec.layers, s.numLayers).map((ref, l) =>
        tensorOf(
          `layers[${l}]`,
          ref,
          ['block', 'kv', ...innerDims],
          [s.numBlocks, 2, ...inner],
          eb,
          l,
          0,
        ),
      );
    case 'stacked': {
      const raw: unknown = spec.order ?? kvDims;
      if (
        !Array.isArray(raw) ||
        raw.length !== kvDims.length ||
        kvDims.some((d) => !(raw as unknown[]).includes(d))
      ) {
        bad(`order must list each of ${kvDims.join(', ')} once`);
      }
      const order = raw as readonly KvDim[];
      const size: Record<KvDim, number> = {
        layer: s.numLayers,
        kv: 2,
        block: s.numBlocks,
        token: s.blockTokens,
        head: s.kvHeads,
        dim: s.headDim,
      };
      return [
        tensorOf(
          'tensor',
          spec.tensor,
          order,
          order.map((d) => size[d]),
          eb,
          0,
          0,
        ),
      ];
    }
    default:
      return bad(
        `form must be 'separate', 'kv-first', 'block-first' or 'stacked', got ${describe((spec as { form: unknown }).form)}`,
      );
  }
}

/** Validates a description and normalises it to one plane per (layer, K/V). */
export function describeKvLayout(spec: KvLayoutSpec): KvLayout {
  // The description is read in many places below; a getter or proxy trap that throws on any of
  // them is a bad description.
  return guard('KV layout', () => describeNow(spec));
}

function describeNow(spec: KvLayoutSpec): KvLayout {
  const shape = shapeOf(spec);
  const eb = kvDtypeBytes[shape.dtype];
  const tensors = tensorsOf(spec, shape, eb);

  // Each tensor on its own, then tensors against each other (by byte interval).
  const intervals: { name: string; start: number; end: number }[] = [];
  for (const t of tensors) {
    checkNoSelfOverlap(t);
    const end = t.offset + spanElements(t) * eb;
    if (!Number.isSafeInteger(end)) bad(`${t.name} reaches past 2^53 bytes`);
    intervals.push({ name: t.name, start: t.offset, end });
  }
  intervals.sort((a, b) => a.start - b.start);
  for (let i = 1; i < intervals.length; i++) {
    const prev = intervals[i - 1]!;
    const cur = intervals[i]!;
    if (cur.start < prev.end) bad(`${cur.name} overlaps ${prev.name}`);
  }

  const planes = new Array<KvPlane>(2 * shape.numLayers);
  for (const t of tensors) {
    const stride = (dim: KvDim): number => {
      const i = t.dims.indexOf(dim);
      return i < 0 ? 0 : (t.strides[i] ?? 0) * eb;
    };
    const layers = t.dims.includes('layer') ? shape.numLayers : 1;
    const kvs = t.dims.includes('kv') ? 2 : 1;
    for (let l = 0; l < layers; l++) {
      for (let k = 0; k < kvs; k++) {
        const layer = t.layer0 + l;
        const kv = (t.kv0 + k) as 0 | 1;
        planes[2 * layer + kv] = {
          layer,
          kv,
          offset: t.offset + l * stride('layer') + k * stride('kv'),
          blockStride: stride('block'),
          tokenStride: stride('token'),
          headStride: stride('head'),
          dimStride: stride('dim'),
        };
      }
    }
  }
  return Object.freeze({
    form: spec.form,
    ...shape,
    dtypeBytes: eb,
    planes: Object.freeze(planes),
    blockBytes: kvBlockBytes(shape),
    extent: intervals.reduce((m, i) => Math.max(m, i.end), 0),
  });
}

/** Throws KVTIER_BAD_ARGUMENT unless `block` is an engine block index of the layout. */
export function checkBlockIndex(layout: KvLayout, block: unknown, where = 'block'): number {
  if (
    typeof block !== 'number' ||
    !Number.isSafeInteger(block) ||
    block < 0 ||
    block >= layout.numBlocks
  ) {
    bad(`${where} ${describe(block)} is out of range: the layout has ${layout.numBlocks} blocks`);
  }
  return block;
}
