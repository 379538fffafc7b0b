/**
 * A tier's codec (docs/codecs.md, "In the Warehouse"): the `codec` option of a file tier checked
 * and opened against the warehouse's block size, the record of it that the tier's directory keeps
 * (so a directory is never read back with another codec), and the one place the encode and decode
 * calls are made.
 */
import { BlockCodec, CODEC_NAMES, type CodecLayout, type CodecName } from '../core/codec.js';
import { KvtierError } from '../core/errors.js';
import { describe, integer, options as readOptions, string } from '../core/validate.js';
import type { TierCodecInfo } from './tier.js';

/**
 * A file tier's codec: its name and options (BlockCodec's), and the layout of the warehouse's
 * blocks (describeKvLayout's result will do), whose block bytes must be the warehouse's blockBytes.
 */
export interface FileTierCodecOptions {
  codec: CodecName;
  /** kivi2, kivi4: channels per value group (default 32). */
  group?: number;
  /** int8: 'kivi' (default: keys per channel, values per token) or 'token'. */
  scales?: 'token' | 'kivi';
  layout: CodecLayout;
}

function bad(message: string): never {
  throw new KvtierError('KVTIER_BAD_ARGUMENT', message);
}

/** What a directory's format record says of its codec: enough to refuse any other one. */
export interface CodecRecord {
  codec: string;
  group?: number;
  scales?: string;
  dtype: string;
  numLayers: number;
  blockTokens: number;
  kvHeads: number;
  headDim: number;
  /** Bytes of one encoded block, header included (before padding to the slot). */
  encodedBytes: number;
}

/** Checks a tier's `codec` option (deeper checks in open). */
export function checkCodecOption(given: unknown, name: string): FileTierCodecOptions {
  const o = readOptions<Record<'codec' | 'group' | 'scales' | 'layout', unknown>>(given, name, [
    'codec',
    'group',
    'scales',
    'layout',
  ]);
  string(o.codec, `${name}.codec`);
  if (typeof o.layout !== 'object' || o.layout === null) {
    bad(
      `${name}.layout must be the block's KV layout (describeKvLayout's result, or { dtype, numLayers, blockTokens, kvHeads, headDim }), got ${describe(o.layout)}`,
    );
  }
  const l = o.layout as Record<string, unknown>;
  const layout: CodecLayout = {
    dtype: string(l.dtype, `${name}.layout.dtype`),
    numLayers: integer(l.numLayers, `${name}.layout.numLayers`, { min: 1 }),
    blockTokens: integer(l.blockTokens, `${name}.layout.blockTokens`, { min: 1 }),
    kvHeads: integer(l.kvHeads, `${name}.layout.kvHeads`, { min: 1 }),
    headDim: integer(l.headDim, `${name}.layout.headDim`, { min: 1 }),
  };
  return { ...(o as unknown as FileTierCodecOptions), layout };
}

/**
 * Opens the codec of tier `name`; KVTIER_BAD_ARGUMENT when it does not fit its layout, or when the
 * layout's blocks are not the warehouse's blocks.
 */
export function openTierCodec(
  option: FileTierCodecOptions,
  blockBytes: number,
  name: string,
): BlockCodec {
  const { layout, ...spec } = option;
  let codec: BlockCodec;
  try {
    codec = BlockCodec.open(spec, layout);
  } catch (e) {
    if (e instanceof KvtierError) bad(`tier ${name}: ${e.message}`);
    throw e;
  }
  if (codec.decodedBytes !== blockBytes) {
    const { dtype, numLayers: l, blockTokens: t, kvHeads: h, headDim: d } = layout;
    bad(
      `tier ${name}: the codec's layout (${dtype}, ${l} layers × ${t} tokens × ${h} heads × ${d} dim) makes blocks of ${codec.decodedBytes} bytes, but the warehouse's blockBytes is ${blockBytes}`,
    );
  }
  return codec;
}

/** The codec's name and options as stats() and the format record show them. */
export function codecSpec(codec: BlockCodec): TierCodecInfo['spec'] {
  const p = codec.params;
  if (p.codec === 'int8') return { codec: p.codec, scales: p.scales };
  if (p.codec === 'kivi2' || p.codec === 'kivi4') return { codec: p.codec, group: p.group };
  return { codec: p.codec };
}

export function codecRecord(codec: BlockCodec): CodecRecord {
  const p = codec.params;
  return {
    ...codecSpec(codec),
    dtype: p.dtype,
    numLayers: p.layers,
    blockTokens: p.tokens,
    kvHeads: p.heads,
    headDim: p.dim,
    encodedBytes: codec.encodedBytes,
  };
}

/** A codec record in words: 'none', or its name, options and layout. */
export function codecWords(r: CodecRecord | undefined): string {
  if (r === undefined) return "'none' (blocks stored as they are)";
  const options = [
    r.group !== undefined ? `group ${r.group}` : '',
    r.scales !== undefined ? `scales ${r.scales}` : '',
  ].filter((s) => s !== '');
  const shape = `${r.dtype} ${r.numLayers}×${r.blockTokens}×${r.kvHeads}×${r.headDim}`;
  return `'${r.codec}' (${[...options, shape].join(', ')})`;
}

const RECORD_FIELDS = [
  'codec',
  'group',
  'scales',
  'dtype',
  'numLayers',
  'blockTokens',
  'kvHeads',
  'headDim',
  'encodedBytes',
] as const;

/**
 * Refuses to reopen `dir`, whose record says `found`, with the codec `want` (undefined: none)
 * unless they are the same codec, options and layout; names both.
 */
export function checkCodecRecord(
  dir: string,
  found: CodecRecord | undefined,
  want: CodecRecord | undefined,
): void {
  if (found !== undefined && !(CODEC_NAMES as readonly unknown[]).includes(found.codec)) {
    bad(
      `${dir} holds blocks encoded with codec ${describe(found.codec)}, which this build of kvtier does not know (it knows ${CODEC_NAMES.join(', ')}); this warehouse asked for ${codecWords(want)}`,
    );
  }
  const same =
    found === want ||
    (found !== undefined && want !== undefined && RECORD_FIELDS.every((f) => found[f] === want[f]));
  if (!same) {
    bad(
      `${dir} holds blocks stored with codec ${codecWords(found)}, not ${codecWords(want)} as this warehouse asks; refusing to reinterpret them (open it with the codec it was written with)`,
    );
  }
}

/**
 * Encodes one block: the one place the Warehouse encodes, on kvtier's codec threads (the main
 * thread only waits). src and dst must not be touched until it settles.
 */
export async function encodeBlock(
  codec: BlockCodec,
  src: Uint8Array,
  dst: Uint8Array,
): Promise<void> {
  await codec.encodeAsync(src, dst, 1);
}

/** Decodes one block on the codec threads; refused (dst untouched) when its header is not this
 * codec's. */
export async function decodeBlock(
  codec: BlockCodec,
  src: Uint8Array,
  dst: Uint8Array,
): Promise<void> {
  await codec.decodeAsync(src, dst, 1);
}
