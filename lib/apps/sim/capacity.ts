/** Capacities for `kvtier sim`: a share of the trace's distinct blocks, a block count, or bytes. */
import { KvtierError } from '../../index.js';

/** KV bytes per token (2 × layers × kv heads × head dim × 2 bytes, fp16/bf16). */
export const models: Record<string, number> = {
  'llama3-8b': 2 * 32 * 8 * 128 * 2,
  'llama3-70b': 2 * 80 * 8 * 128 * 2,
  'mistral-7b': 2 * 32 * 8 * 128 * 2,
  'qwen2.5-7b': 2 * 28 * 4 * 128 * 2,
};

const units: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

export type CapacitySpec =
  | { kind: 'percent'; value: number }
  | { kind: 'blocks'; value: number }
  | { kind: 'bytes'; value: number };

export function parseCapacity(text: string): CapacitySpec {
  const s = text.trim();
  let m = /^(\d+(?:\.\d+)?)\s*%$/.exec(s);
  if (m) return { kind: 'percent', value: Number(m[1]) };
  m = /^(\d+)$/.exec(s);
  if (m) return { kind: 'blocks', value: Number(m[1]) };
  m = /^(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)$/i.exec(s);
  if (m) return { kind: 'bytes', value: Number(m[1]) * units[m[2]!.toLowerCase()]! };
  throw new KvtierError(
    'KVTIER_BAD_ARGUMENT',
    `bad capacity "${text}" (a percentage of distinct blocks like 5%, a block count, or bytes like 16GiB)`,
  );
}

/** `gpu=1%,host=5%,file=25%` → named capacity specs, in order (the first is the top tier). */
export function parseTiers(text: string): { name: string; spec: CapacitySpec }[] {
  const parts = text.split(',').filter((p) => p.trim().length > 0);
  if (parts.length === 0) throw new KvtierError('KVTIER_BAD_ARGUMENT', 'no tiers given');
  const seen = new Set<string>();
  return parts.map((p) => {
    const eq = p.indexOf('=');
    if (eq <= 0) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', `bad tier "${p}" (expected name=capacity)`);
    }
    const name = p.slice(0, eq).trim();
    if (seen.has(name)) throw new KvtierError('KVTIER_BAD_ARGUMENT', `tier "${name}" given twice`);
    seen.add(name);
    return { name, spec: parseCapacity(p.slice(eq + 1)) };
  });
}

/** Capacity in blocks. */
export function resolveCapacity(
  spec: CapacitySpec,
  distinct: number,
  blockBytes: number | undefined,
  name = 'cache',
): number {
  let blocks: number;
  if (spec.kind === 'percent') blocks = Math.round((distinct * spec.value) / 100);
  else if (spec.kind === 'blocks') blocks = spec.value;
  else {
    if (!blockBytes) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `tier ${name}: a capacity in bytes needs --model or --block-bytes`,
      );
    }
    blocks = Math.floor(spec.value / blockBytes);
  }
  if (!(blocks > 0)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `tier ${name}: capacity is 0 blocks (a cache must hold at least one block)`,
    );
  }
  return blocks;
}
