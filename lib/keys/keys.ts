/**
 * Block keys: a chained prefix hash, so equal keys mean equal prefixes (docs/keys.md has the exact
 * byte layout and test vectors, for engines in other languages).
 *
 *   root    = SHA-256("kvtier-key-v1" || 0x00 || UTF-8(namespace))
 *   key[0]  = SHA-256(root   || tokens[0 .. B)   as uint32 little-endian)
 *   key[i]  = SHA-256(key[i-1] || tokens[iB .. iB+B) as uint32 little-endian)
 *
 * Only full blocks get keys. In the API a key is a lowercase hex string: cheap to compare, to use
 * as a Map key, to log and to store in Redis.
 */
import { createHash } from 'node:crypto';

import { KvtierError } from '../core/errors.js';
import { native } from '../core/native.js';
import { badArgument, guard, integer, options as readOptions } from '../core/validate.js';

export type Key = string;
/** What callers may pass as a key: hex text, or raw bytes (16 to 32 of them). */
export type KeyLike = string | Uint8Array;

export const KEY_BYTES = 32;
const MIN_KEY_BYTES = 16;
const HEX = /^[0-9a-f]+$/;
/** Keys hex-encoded per native call (a 4 KiB string). */
const HEX_RUN = 64;

const roots = new Map<string, Buffer>();

/** The root every chain of a namespace starts from. */
export function namespaceRoot(namespace = ''): Buffer {
  if (typeof namespace !== 'string') throw badArgument('namespace', 'a string', namespace);
  let root = roots.get(namespace);
  if (!root) {
    root = createHash('sha256').update('kvtier-key-v1\0').update(namespace, 'utf8').digest();
    roots.set(namespace, root);
  }
  return root;
}

/**
 * The keys of one token sequence, hashed in one native call. Hex strings are made on first use,
 * so an engine that only needs the bytes pays nothing for them.
 */
export class KeyChain implements Iterable<Key> {
  /** Key i is bytes[32i, 32i + 32). */
  readonly bytes: Buffer;
  readonly length: number;
  private cached: Key[] | undefined;

  constructor(bytes: Buffer) {
    if (!guard('bytes', () => Buffer.isBuffer(bytes)) || bytes.length % KEY_BYTES !== 0) {
      throw badArgument('bytes', `a Buffer of whole ${KEY_BYTES}-byte keys`, bytes);
    }
    this.bytes = bytes;
    this.length = bytes.length / KEY_BYTES;
  }

  key(i: number): Key {
    return this.keys()[i]!;
  }

  /** All keys as hex strings. */
  keys(): Key[] {
    if (!this.cached) {
      // Natively, HEX_RUN keys at a time: a string of a few KiB lands in the young generation's
      // own memory, where one hex string of a whole 128k-token chain (half a megabyte, by
      // Buffer.toString) costs a large-object page and a collection each time, several times the
      // encoding (issue 13, "Speed").
      const addon = native();
      const keys = new Array<Key>(this.length);
      const digits = KEY_BYTES * 2;
      for (let from = 0; from < this.length; from += HEX_RUN) {
        const to = Math.min(this.length, from + HEX_RUN);
        const run = addon.hex(this.bytes, from * KEY_BYTES, to * KEY_BYTES);
        for (let i = from; i < to; i++) {
          const at = (i - from) * digits;
          keys[i] = run.slice(at, at + digits);
        }
      }
      this.cached = keys;
    }
    return this.cached;
  }

  [Symbol.iterator](): Iterator<Key> {
    return this.keys()[Symbol.iterator]();
  }
}

export interface ChainOptions {
  /** Tokens per block. */
  blockTokens: number;
  /** Tenant: keys of different namespaces never collide. Default ''. */
  namespace?: string;
  /** Continue a chain: the key of the block before tokens[0] (default: the namespace root). */
  parent?: KeyLike;
}

export function chainKeys(tokens: ArrayLike<number> | Uint32Array, given: ChainOptions): KeyChain {
  if (given === undefined) throw badArgument('options', 'an object with blockTokens', given);
  const options = readOptions<ChainOptions>(given, 'options', [
    'blockTokens',
    'namespace',
    'parent',
  ]);
  const blockTokens = integer(options.blockTokens, 'blockTokens', { min: 1 });
  if (typeof tokens !== 'object' || tokens === null) {
    throw badArgument('tokens', 'a Uint32Array or an array of token ids', tokens);
  }
  const ids = guard('tokens', () => tokenIds(tokens, blockTokens));
  const root =
    options.parent === undefined
      ? namespaceRoot(options.namespace ?? '')
      : keyBytes(options.parent);
  if (root.length !== KEY_BYTES) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'a parent key for chainKeys must be 32 bytes');
  }
  return new KeyChain(native().chainHash(ids, blockTokens, root));
}

/** The token ids of the full blocks of `tokens`, as uint32. */
function tokenIds(tokens: ArrayLike<number>, blockTokens: number): Uint32Array {
  if (tokens instanceof Uint32Array) return tokens;
  const length = integer(tokens.length, 'tokens.length');
  const full = Math.floor(length / blockTokens) * blockTokens;
  const ids = new Uint32Array(full);
  for (let i = 0; i < full; i++) {
    const t = tokens[i];
    // Only a number that is already a uint32 survives >>> 0 unchanged (the typeof first: >>> would
    // call an object's valueOf, and throw a TypeError on a BigInt).
    if (typeof t !== 'number' || t >>> 0 !== t) throw badArgument(`token ${i}`, 'a uint32', t);
    ids[i] = t;
  }
  return ids;
}

/** Whether s is already a key in canonical form: 32 to 64 lowercase hex digits, even length. */
function isCanonical(s: string): boolean {
  const n = s.length;
  if (n < MIN_KEY_BYTES * 2 || n > KEY_BYTES * 2 || (n & 1) !== 0) return false;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    // 0-9 or a-f
    if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102))) return false;
  }
  return true;
}

/** Validates a key and returns its hex form. */
export function toKey(k: KeyLike): Key {
  if (typeof k === 'string') {
    // The common case (keys that came from chainKeys or from this library) costs one scan.
    if (isCanonical(k)) return k;
    const lower = k.toLowerCase();
    if (
      lower.length % 2 !== 0 ||
      lower.length < MIN_KEY_BYTES * 2 ||
      lower.length > KEY_BYTES * 2 ||
      !HEX.test(lower)
    ) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `a key must be 16 to 32 bytes as hex (32 to 64 hex digits), got ${JSON.stringify(k.slice(0, 80))}`,
      );
    }
    return lower;
  }
  // instanceof asks a proxy's trap for the prototype, which may throw.
  const bytes = guard('key', () => k instanceof Uint8Array);
  if (!bytes || k.length < MIN_KEY_BYTES || k.length > KEY_BYTES) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `a key must be 16 to 32 bytes, got ${bytes ? `${k.length} bytes` : typeof k}`,
    );
  }
  return Buffer.from(k.buffer, k.byteOffset, k.length).toString('hex');
}

export function keyBytes(k: KeyLike): Buffer {
  return Buffer.from(toKey(k), 'hex');
}

/** Normalizes what callers pass as a list of keys. */
export function toKeys(keys: KeyChain | readonly KeyLike[]): Key[] {
  return guard('keys', () => {
    if (keys instanceof KeyChain) return keys.keys();
    if (!Array.isArray(keys)) {
      throw badArgument('keys', 'a KeyChain or an array of keys', keys);
    }
    // Array.from visits holes of a sparse array (as undefined, refused) where map would skip them.
    return Array.from(keys, (k: KeyLike) => toKey(k));
  });
}
