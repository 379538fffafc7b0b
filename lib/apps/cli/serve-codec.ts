/**
 * `kvtier serve --file-codec`: the file tier's codec (docs/codecs.md, "In the Warehouse") from two
 * flags, the codec and the shape of the blocks it encodes. The Warehouse checks the rest at open
 * (the codec fits the shape, the shape's blocks are --block-bytes).
 */
import { KvtierError, type FileTierCodecOptions } from '../../index.js';

export interface ServeCodecOptions {
  fileCodec?: string;
  kvShape?: string;
}

function bad(message: string): never {
  throw new KvtierError('KVTIER_BAD_ARGUMENT', message);
}

const CODECS: Record<string, Omit<FileTierCodecOptions, 'layout'>> = {
  'fp8-e4m3': { codec: 'fp8-e4m3' },
  int8: { codec: 'int8' },
  'int8-token': { codec: 'int8', scales: 'token' },
  kivi4: { codec: 'kivi4' },
  kivi2: { codec: 'kivi2' },
};

/** The file tier's `codec` option, or undefined without --file-codec. */
export function fileCodecOption(opts: ServeCodecOptions): FileTierCodecOptions | undefined {
  if (opts.fileCodec === undefined) {
    if (opts.kvShape !== undefined) bad('--kv-shape goes with --file-codec');
    return undefined;
  }
  // kivi takes a group size after a colon: kivi2:64.
  const [name = '', group, ...rest] = opts.fileCodec.split(':');
  if (rest.length > 0) bad(`--file-codec takes one group size at most, got ${opts.fileCodec}`);
  const spec = CODECS[name];
  if (!spec) {
    bad(
      `--file-codec must be one of ${Object.keys(CODECS).join(', ')} (kivi with :group), got ${opts.fileCodec}`,
    );
  }
  if (group !== undefined && !name.startsWith('kivi'))
    bad(`--file-codec ${name} takes no group size`);
  if (opts.kvShape === undefined) {
    bad(
      '--file-codec needs --kv-shape dtype,layers,blockTokens,kvHeads,headDim (e.g. bf16,32,16,8,128)',
    );
  }
  const fields = opts.kvShape.split(',');
  const sizes = fields.slice(1).map(Number);
  const decimal = fields.slice(1).every((f) => /^[0-9]+$/.test(f));
  if (fields.length !== 5 || !decimal || !sizes.every((n) => Number.isSafeInteger(n) && n > 0)) {
    bad(`--kv-shape must be dtype,layers,blockTokens,kvHeads,headDim, got ${opts.kvShape}`);
  }
  const [numLayers, blockTokens, kvHeads, headDim] = sizes as [number, number, number, number];
  const g = group === undefined ? undefined : Number(group);
  if (g !== undefined && !(/^[0-9]+$/.test(group!) && Number.isSafeInteger(g) && g > 0)) {
    bad(`--file-codec's group size must be a positive integer, got ${group}`);
  }
  return {
    ...spec,
    ...(g !== undefined ? { group: g } : {}),
    layout: { dtype: fields[0]!, numLayers, blockTokens, kvHeads, headDim },
  };
}
