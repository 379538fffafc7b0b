/**
 * KV block codecs (docs/codecs.md): lossy encodings of one packed kvtier block (NHD packing,
 * docs/layouts.md) for the tiers below GPU memory. The work is native (native/codec/): one call
 * for any number of consecutive blocks, either synchronously on the calling thread or, with the
 * Async methods, on kvtier's codec threads (the batch split across them; one promise per call).
 *
 * A codec is opened for a layout, so a codec that cannot fit it (an fp8 layout, a head dimension
 * the group size does not divide) fails at open with KVTIER_BAD_ARGUMENT. Every encoded block
 * carries a header naming its codec, version, dtype and shape; decoding a block that another codec
 * (or another layout) wrote is refused the same way, never turned into a wrong block.
 */
import { availableParallelism } from 'node:os';

import { KvtierError } from './errors.js';
import { native, type CodecParams, type NativeCodecPool } from './native.js';
import { describe } from './validate.js';

export type { CodecParams } from './native.js';

export const CODEC_NAMES = ['fp8-e4m3', 'int8', 'kivi2', 'kivi4'] as const;
export type CodecName = (typeof CODEC_NAMES)[number];

/** Bytes of the header at the start of every encoded block. */
export const CODEC_HEADER_BYTES = 32;

export interface CodecSpec {
  codec: CodecName;
  /** kivi only: channels per value group (default 32); must divide the head dimension. */
  group?: number;
  /**
   * int8 only: 'kivi' (default) scales keys per channel over the block's tokens and values per
   * token; 'token' scales both per token.
   */
  scales?: 'token' | 'kivi';
}

/** The fields of a layout (describeKvLayout's result qualifies) a codec needs. */
export interface CodecLayout {
  dtype: string;
  numLayers: number;
  blockTokens: number;
  kvHeads: number;
  headDim: number;
}

export const DEFAULT_KIVI_GROUP = 32;

function bad(message: string): never {
  throw new KvtierError('KVTIER_BAD_ARGUMENT', message);
}

function bytesOf(view: unknown, name: string): Uint8Array {
  if (view instanceof Uint8Array) return view;
  if (ArrayBuffer.isView(view))
    return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  if (view instanceof ArrayBuffer) return new Uint8Array(view);
  return bad(`${name} must be an ArrayBuffer or a typed array, got ${describe(view)}`);
}

/**
 * Which encode and decode path this CPU uses: 'avx2' (AVX2 and F16C) or 'scalar' (the portable
 * one, also used on arm64: no NEON path is written); both give the same bits.
 */
export function codecIsa(): string {
  return native().codecIsa();
}

/** Threads of the shared codec pool when none was set: one a core, at most this many. */
export const DEFAULT_CODEC_THREADS_MAX = 8;

let pool: NativeCodecPool | undefined;
let poolThreads: number | undefined;

/** The process's codec threads, started at the first asynchronous call. */
function codecPool(): NativeCodecPool {
  pool ??= new (native().NativeCodecPool)({
    threads: poolThreads ?? Math.min(availableParallelism(), DEFAULT_CODEC_THREADS_MAX),
  });
  return pool;
}

/**
 * Sets how many threads the asynchronous codec calls share (1 to 256). The calls already queued
 * finish on the old threads, and this call waits for them; the next call starts the new ones.
 */
export function setCodecThreads(threads: number): void {
  if (!Number.isSafeInteger(threads) || threads < 1 || threads > 256) {
    bad(`codec threads must be an integer from 1 to 256, got ${describe(threads)}`);
  }
  poolThreads = threads;
  pool?.close();
  pool = undefined;
}

/** How many threads the asynchronous codec calls run on (starting them if needed). */
export function codecThreads(): number {
  return codecPool().threads;
}

export class BlockCodec {
  /** Bytes of one block as the engine keeps it, and encoded (header included). */
  readonly decodedBytes: number;
  readonly encodedBytes: number;

  private constructor(readonly params: Readonly<CodecParams>) {
    const sizes = native().codecSizes(params);
    this.decodedBytes = sizes.decodedBytes;
    this.encodedBytes = sizes.encodedBytes;
  }

  /** Opens a codec for a layout; KVTIER_BAD_ARGUMENT when it does not fit. */
  static open(spec: CodecSpec, layout: CodecLayout): BlockCodec {
    if (spec === null || typeof spec !== 'object')
      bad(`codec must be an object, got ${describe(spec)}`);
    const { codec, group, scales } = spec;
    if (!(CODEC_NAMES as readonly unknown[]).includes(codec)) {
      bad(`codec must be one of ${CODEC_NAMES.join(', ')}, got ${describe(codec)}`);
    }
    const { dtype } = layout;
    if (dtype !== 'fp16' && dtype !== 'bf16' && dtype !== 'fp32') {
      bad(
        `codec ${codec} cannot encode dtype ${describe(dtype)}: it encodes fp16, bf16 and fp32 KV`,
      );
    }
    const kivi = codec === 'kivi2' || codec === 'kivi4';
    if (!kivi && group !== undefined) bad(`codec ${codec} takes no group size`);
    if (codec !== 'int8' && scales !== undefined) bad(`codec ${codec} takes no scales option`);
    if (scales !== undefined && scales !== 'token' && scales !== 'kivi') {
      bad(`scales must be 'token' or 'kivi', got ${describe(scales)}`);
    }
    const g = kivi ? (group ?? DEFAULT_KIVI_GROUP) : 0;
    if (kivi && (!Number.isSafeInteger(g) || g <= 0)) {
      bad(`group must be a positive integer, got ${describe(group)}`);
    }
    if (kivi && layout.headDim % g !== 0) {
      bad(
        `codec ${codec}: the group size ${g} does not divide the head dimension ${layout.headDim}`,
      );
    }
    return new BlockCodec({
      codec,
      dtype,
      layers: layout.numLayers,
      tokens: layout.blockTokens,
      heads: layout.kvHeads,
      dim: layout.headDim,
      group: g,
      scales: codec === 'int8' ? (scales ?? 'kivi') : 'none',
    });
  }

  /** Reads an encoded block's header; KVTIER_BAD_ARGUMENT when it is not one. */
  static readHeader(block: ArrayBufferView | ArrayBuffer): CodecParams {
    return native().codecReadHeader(bytesOf(block, 'block'));
  }

  /** Encoded bytes per decoded byte (below 1). */
  get ratio(): number {
    return this.encodedBytes / this.decodedBytes;
  }

  /**
   * Encodes `blocks` consecutive blocks of src into dst. `isa: 'scalar'` forces the portable path
   * (the SIMD one writes the same bytes; tests compare the two).
   */
  encode(
    src: ArrayBufferView | ArrayBuffer,
    dst: ArrayBufferView | ArrayBuffer,
    blocks = 1,
    options: { isa?: 'scalar' | 'auto' } = {},
  ): void {
    native().codecEncode(
      this.params,
      bytesOf(src, 'src'),
      bytesOf(dst, 'dst'),
      blocks,
      options.isa,
    );
  }

  /**
   * Decodes `blocks` consecutive encoded blocks into dst. Refused, dst untouched, when any block's
   * header is not this codec's. `isa: 'scalar'` forces the portable path (tests compare the two).
   */
  decode(
    src: ArrayBufferView | ArrayBuffer,
    dst: ArrayBufferView | ArrayBuffer,
    blocks = 1,
    options: { isa?: 'scalar' | 'auto' } = {},
  ): void {
    native().codecDecode(
      this.params,
      bytesOf(src, 'src'),
      bytesOf(dst, 'dst'),
      blocks,
      options.isa,
    );
  }

  /**
   * encode() on kvtier's codec threads. Both buffers are held until the promise settles and must
   * not be touched meanwhile; a refusal rejects with the same KvtierError as encode() (the first
   * refused block's), and dst is then unspecified, as with encode().
   */
  async encodeAsync(
    src: ArrayBufferView | ArrayBuffer,
    dst: ArrayBufferView | ArrayBuffer,
    blocks = 1,
    options: { isa?: 'scalar' | 'auto' } = {},
  ): Promise<void> {
    await codecPool().run(
      'encode',
      this.params,
      bytesOf(src, 'src'),
      bytesOf(dst, 'dst'),
      blocks,
      options.isa,
    );
  }

  /**
   * decode() on kvtier's codec threads. Every header is checked before anything is queued: a
   * refused batch rejects with decode()'s KvtierError and leaves dst untouched.
   */
  async decodeAsync(
    src: ArrayBufferView | ArrayBuffer,
    dst: ArrayBufferView | ArrayBuffer,
    blocks = 1,
    options: { isa?: 'scalar' | 'auto' } = {},
  ): Promise<void> {
    await codecPool().run(
      'decode',
      this.params,
      bytesOf(src, 'src'),
      bytesOf(dst, 'dst'),
      blocks,
      options.isa,
    );
  }
}
