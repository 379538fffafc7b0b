/**
 * The Warehouse's control plane on the CPU, next to the obvious peers: `chainKeys` against a
 * per-block `crypto.createHash('sha256')` loop computing the same chain, and prefix lookups
 * (`warehouse.lookup`, `BlockIndex.prefix`) against a plain `Map` loop over the same hex keys.
 *
 * Method: every sample of kvtier is followed at once by a sample of its peer, so drift in the
 * machine (another process on a shared core) hits both alike; the reported figure is the median.
 * Both sides of the chainKeys comparison are checked to produce identical key bytes.
 */
import { createHash } from 'node:crypto';

import {
  BlockIndex,
  chainKeys,
  type Key,
  KvtierError,
  LruPolicy,
  namespaceRoot,
  Region,
  Warehouse,
} from '../../index.js';
import { KEY_BYTES } from '../../internal.js';
import { median, seededRandom } from './stats.js';

/** The targets of issue 3 ("Speed"). */
export const KEY_TARGETS = {
  /** chainKeys of a 128k-token prompt at 16-token blocks, in milliseconds (at most). */
  chainKeysMs: 2,
  /** Prefix lookup of a 256-key chain, in keys per second (at least). */
  lookupKeysPerSec: 5e6,
} as const;

export interface ChainKeysRow {
  section: 'chainKeys';
  /** What kvtier returns: `bytes` (KeyChain, hex made lazily), `hex` (then .keys()),
   * `number[]` (tokens as a plain array, validated and copied to a Uint32Array first). */
  variant: 'bytes' | 'hex' | 'number[]';
  tokens: number;
  blockTokens: number;
  keys: number;
  /** kvtier's median milliseconds per chain. */
  ms: number;
  peer: 'createHash-loop';
  peerMs: number;
  /** Throughput ratio, kvtier / peer (= peerMs / ms): above 1, kvtier is faster. */
  ratio: number;
  targetMs: number;
  meetsTarget: boolean;
}

export interface LookupRow {
  section: 'lookup';
  /** `warehouse.lookup(KeyChain)`, `warehouse.lookup(string[])` (each key validated),
   * `BlockIndex.prefix`. */
  variant: 'warehouse.lookup(KeyChain)' | 'warehouse.lookup(string[])' | 'BlockIndex.prefix';
  keys: number;
  /** kvtier's median keys per second. */
  keysPerSec: number;
  peer: 'Map';
  peerKeysPerSec: number;
  /** keysPerSec / peerKeysPerSec. */
  ratio: number;
  targetKeysPerSec: number;
  meetsTarget: boolean;
}

/** One timed sample, as measured. */
export interface KeysRun {
  section: 'chainKeys' | 'lookup';
  tool: 'kvtier' | 'peer';
  variant: string;
  sample: number;
  /** chainKeys: ms per chain; lookup: keys per second. */
  value: number;
}

export interface KeysBenchOptions {
  /** Prompt length in tokens (default 131072). */
  tokens?: number;
  /** Tokens per block (default 16). */
  blockTokens?: number;
  /** Timed samples per chainKeys variant (default 201). */
  chainSamples?: number;
  /** Chain length for the lookups (default 256). */
  lookupKeys?: number;
  /** Timed samples per lookup variant (default 51). */
  lookupSamples?: number;
  /** Lookups of the whole chain per sample (default: 131072 keys' worth). */
  lookupIterations?: number;
  onProgress?: (message: string) => void;
}

export interface KeysBenchResolved {
  tokens: number;
  blockTokens: number;
  chainSamples: number;
  lookupKeys: number;
  lookupSamples: number;
  lookupIterations: number;
}

export const KEYS_DEFAULTS = {
  tokens: 131072,
  blockTokens: 16,
  chainSamples: 201,
  lookupKeys: 256,
  lookupSamples: 51,
} as const;

function positive(value: number, what: string, max = Number.MAX_SAFE_INTEGER): void {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${what} must be a positive integer, got ${value}`,
    );
  }
  if (value > max) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `${what} must be at most ${max}, got ${value}`);
  }
}

export function validateKeysBenchOptions(options: KeysBenchOptions): KeysBenchResolved {
  const tokens = options.tokens ?? KEYS_DEFAULTS.tokens;
  const blockTokens = options.blockTokens ?? KEYS_DEFAULTS.blockTokens;
  const chainSamples = options.chainSamples ?? KEYS_DEFAULTS.chainSamples;
  const lookupKeys = options.lookupKeys ?? KEYS_DEFAULTS.lookupKeys;
  const lookupSamples = options.lookupSamples ?? KEYS_DEFAULTS.lookupSamples;
  positive(tokens, 'tokens', 2 ** 26);
  positive(blockTokens, 'block tokens', 2 ** 20);
  if (tokens < blockTokens) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `tokens (${tokens}) must hold at least one block of ${blockTokens} tokens`,
    );
  }
  positive(chainSamples, 'chain samples');
  positive(lookupKeys, 'lookup keys', 2 ** 20);
  positive(lookupSamples, 'lookup samples');
  const lookupIterations = options.lookupIterations ?? Math.max(1, Math.round(131072 / lookupKeys));
  positive(lookupIterations, 'lookup iterations');
  return { tokens, blockTokens, chainSamples, lookupKeys, lookupSamples, lookupIterations };
}

/** A deterministic token sequence (a seeded stand-in for a tokenizer's output). */
export function benchTokens(count: number, seed = 7): Uint32Array {
  const rand = seededRandom(seed);
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = Math.floor(rand() * 152_064); // a Qwen-sized vocabulary
  return out;
}

/**
 * The peer: the loop a Node user would write from docs/keys.md with node:crypto, one
 * `createHash('sha256')` per block. Returns the keys as chainKeys does: key i is bytes [32i, 32i+32).
 * Tokens are hashed as uint32 little-endian, which on the little-endian machines Node runs kvtier
 * on is the Uint32Array's own memory.
 */
export function chainKeysWithCreateHash(
  tokens: Uint32Array,
  blockTokens: number,
  root: Buffer = namespaceRoot(''),
): Buffer {
  const blocks = Math.floor(tokens.length / blockTokens);
  const out = Buffer.allocUnsafe(blocks * KEY_BYTES);
  const data = Buffer.from(tokens.buffer, tokens.byteOffset, blocks * blockTokens * 4);
  const step = blockTokens * 4;
  let parent: Buffer = root;
  for (let i = 0; i < blocks; i++) {
    const key = createHash('sha256')
      .update(parent)
      .update(data.subarray(i * step, i * step + step))
      .digest();
    key.copy(out, i * KEY_BYTES);
    parent = key;
  }
  return out;
}

/** The peer's hex form: one digest and one toString('hex') per block. */
export function chainHexWithCreateHash(
  tokens: Uint32Array,
  blockTokens: number,
  root: Buffer = namespaceRoot(''),
): Key[] {
  const blocks = Math.floor(tokens.length / blockTokens);
  const data = Buffer.from(tokens.buffer, tokens.byteOffset, blocks * blockTokens * 4);
  const step = blockTokens * 4;
  const keys = new Array<Key>(blocks);
  let parent: Buffer = root;
  for (let i = 0; i < blocks; i++) {
    parent = createHash('sha256')
      .update(parent)
      .update(data.subarray(i * step, i * step + step))
      .digest();
    keys[i] = parent.toString('hex');
  }
  return keys;
}

function msOf(f: () => unknown): number {
  const start = process.hrtime.bigint();
  f();
  return Number(process.hrtime.bigint() - start) / 1e6;
}

/** Throws unless kvtier's keys and the peer's are the same bytes. */
export function assertSameChain(kvtier: Buffer, peer: Buffer, what: string): void {
  if (!kvtier.equals(peer)) {
    throw new KvtierError(
      'KVTIER_IO',
      `${what}: chainKeys and the createHash loop disagree (${kvtier.length} vs ${peer.length} bytes)`,
    );
  }
}

interface Pair {
  variant: string;
  kvtier: () => unknown;
  peer: () => unknown;
}

/** Alternating samples of kvtier and its peer; even samples run kvtier first, odd ones the peer. */
function alternate(
  section: KeysRun['section'],
  pairs: Pair[],
  samples: number,
  warmup: number,
  measure: (f: () => unknown) => number,
  runs: KeysRun[],
): void {
  for (const p of pairs) {
    for (let i = 0; i < warmup; i++) {
      p.kvtier();
      p.peer();
    }
  }
  for (let s = 0; s < samples; s++) {
    for (const p of pairs) {
      const order: ('kvtier' | 'peer')[] = s % 2 === 0 ? ['kvtier', 'peer'] : ['peer', 'kvtier'];
      for (const tool of order) {
        runs.push({ section, tool, variant: p.variant, sample: s, value: measure(p[tool]) });
      }
    }
  }
}

function medianOf(runs: KeysRun[], section: string, variant: string, tool: string): number {
  return median(
    runs
      .filter((r) => r.section === section && r.variant === variant && r.tool === tool)
      .map((r) => r.value),
  );
}

export async function runChainKeysBench(
  opts: KeysBenchResolved,
  runs: KeysRun[],
  progress: (m: string) => void = () => {},
): Promise<ChainKeysRow[]> {
  const { tokens, blockTokens, chainSamples } = opts;
  const ids = benchTokens(tokens);
  const list = Array.from(ids);
  const root = namespaceRoot('');
  const chainOptions = { blockTokens };

  // Identical key bytes, or the comparison means nothing.
  const mine = chainKeys(ids, chainOptions);
  assertSameChain(mine.bytes, chainKeysWithCreateHash(ids, blockTokens, root), 'bytes');
  assertSameChain(chainKeys(list, chainOptions).bytes, mine.bytes, 'number[]');
  const hex = chainHexWithCreateHash(ids, blockTokens, root);
  const mineHex = mine.keys();
  if (hex.length !== mineHex.length || hex.some((k, i) => k !== mineHex[i])) {
    throw new KvtierError('KVTIER_IO', 'hex: chainKeys and the createHash loop disagree');
  }

  progress(`chainKeys: ${tokens} tokens at ${blockTokens} per block, ${chainSamples} samples`);
  await Promise.resolve();
  const pairs: Pair[] = [
    {
      variant: 'bytes',
      kvtier: () => chainKeys(ids, chainOptions),
      peer: () => chainKeysWithCreateHash(ids, blockTokens, root),
    },
    {
      variant: 'hex',
      kvtier: () => chainKeys(ids, chainOptions).keys(),
      peer: () => chainHexWithCreateHash(ids, blockTokens, root),
    },
    {
      variant: 'number[]',
      kvtier: () => chainKeys(list, chainOptions),
      peer: () => chainKeysWithCreateHash(Uint32Array.from(list), blockTokens, root),
    },
  ];
  alternate('chainKeys', pairs, chainSamples, 5, msOf, runs);

  const keys = Math.floor(tokens / blockTokens);
  return pairs.map((p) => {
    const ms = medianOf(runs, 'chainKeys', p.variant, 'kvtier');
    const peerMs = medianOf(runs, 'chainKeys', p.variant, 'peer');
    return {
      section: 'chainKeys',
      variant: p.variant as ChainKeysRow['variant'],
      tokens,
      blockTokens,
      keys,
      ms,
      peer: 'createHash-loop',
      peerMs,
      ratio: peerMs / ms,
      targetMs: KEY_TARGETS.chainKeysMs,
      meetsTarget: ms <= KEY_TARGETS.chainKeysMs,
    };
  });
}

/** A Map lookup loop: how many leading keys of the chain the map holds. */
export function mapPrefix(map: Map<Key, number>, keys: readonly Key[]): number {
  let n = 0;
  while (n < keys.length && map.get(keys[n]!) !== undefined) n++;
  return n;
}

export async function runLookupBench(
  opts: KeysBenchResolved,
  runs: KeysRun[],
  progress: (m: string) => void = () => {},
): Promise<LookupRow[]> {
  const { lookupKeys, lookupSamples, lookupIterations, blockTokens } = opts;
  const chain = chainKeys(benchTokens(lookupKeys * blockTokens, 11), { blockTokens });
  const hex = chain.keys();
  // Each key a string of its own (as keys arriving from another process or a Redis reply are),
  // not slices of one long string.
  const strings = hex.map((k) => Buffer.from(k, 'hex').toString('hex'));

  const blockBytes = 4096;
  const warehouse = await Warehouse.open({
    blockBytes,
    tiers: [{ kind: 'host', bytes: lookupKeys * blockBytes }],
  });
  const src = Region.allocate(lookupKeys * blockBytes, { pin: false });
  try {
    const put = await warehouse.put(chain, src);
    if (put.stored !== lookupKeys) {
      throw new KvtierError('KVTIER_IO', `stored ${put.stored} of ${lookupKeys} lookup keys`);
    }
    const index = new BlockIndex<Key>([
      { name: 'host', capacity: lookupKeys, policy: new LruPolicy<Key>() },
    ]);
    const map = new Map<Key, number>();
    hex.forEach((k, i) => {
      index.place(
        k,
        0,
        { now: 0, priority: 0, depth: i, chainLength: lookupKeys },
        {
          length: blockBytes,
          checksum: 0,
        },
      );
      map.set(k, i);
    });

    // Every variant must see the whole chain, or its speed is that of an early miss.
    const sink = { n: 0 };
    const expect = lookupKeys * lookupIterations;
    const repeat =
      (f: () => number): (() => number) =>
      () => {
        let n = 0;
        for (let i = 0; i < lookupIterations; i++) n += f();
        sink.n = n;
        return n;
      };
    const kps = (f: () => unknown): number => {
      const start = process.hrtime.bigint();
      f();
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      if (sink.n !== expect) {
        throw new KvtierError('KVTIER_IO', `a lookup found ${sink.n} of ${expect} keys`);
      }
      return expect / seconds;
    };
    const peer = repeat(() => mapPrefix(map, hex));
    const peerStrings = repeat(() => mapPrefix(map, strings));
    const pairs: Pair[] = [
      {
        variant: 'warehouse.lookup(KeyChain)',
        kvtier: repeat(() => warehouse.lookup(chain).prefix),
        peer,
      },
      {
        variant: 'warehouse.lookup(string[])',
        kvtier: repeat(() => warehouse.lookup(strings).prefix),
        peer: peerStrings,
      },
      { variant: 'BlockIndex.prefix', kvtier: repeat(() => index.prefix(hex)), peer },
    ];
    progress(`lookup: ${lookupKeys}-key chain, ${lookupSamples} samples`);
    alternate('lookup', pairs, lookupSamples, 3, kps, runs);
    return pairs.map((p) => {
      const keysPerSec = medianOf(runs, 'lookup', p.variant, 'kvtier');
      const peerKeysPerSec = medianOf(runs, 'lookup', p.variant, 'peer');
      return {
        section: 'lookup',
        variant: p.variant as LookupRow['variant'],
        keys: lookupKeys,
        keysPerSec,
        peer: 'Map',
        peerKeysPerSec,
        ratio: keysPerSec / peerKeysPerSec,
        targetKeysPerSec: KEY_TARGETS.lookupKeysPerSec,
        meetsTarget: keysPerSec >= KEY_TARGETS.lookupKeysPerSec,
      };
    });
  } finally {
    await warehouse.close();
    await src.close();
  }
}
