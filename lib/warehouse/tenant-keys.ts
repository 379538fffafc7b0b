/**
 * Tenant key isolation. A tenant's view never stores or looks up the keys its client sends: it maps
 * each to an internal key that only the warehouse can compute,
 *
 *   salt     = HMAC-SHA256(secret, "kvtier-tenant-salt\0" || name)
 *   tag      = HMAC-SHA256(secret, "kvtier-tenant-tag\0"  || name)[0 .. 4)
 *   internal = tag || HMAC-SHA256(salt, keyBytes)[0 .. len - 4)      (len: the key's own length)
 *
 * The tag makes isolation structural (every internal key of a tenant starts with its tag, so no
 * key a client of another tenant sends, whatever its bytes or salt, can map onto it), and tells
 * the index whose block a key is without a row per key, even for blocks found on disk after a
 * restart. The remaining 12 to 28 bytes of HMAC keep the keys of one tenant apart.
 *
 * The secret never leaves the server: given as `tenancy.secret`, or kept in the file tier's
 * directory (tenancy.key, mode 0600) so a reopened store finds its blocks again.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { fromSystemError, KvtierError } from '../core/errors.js';
import { toKey, type Key, type KeyLike } from '../keys/keys.js';

export const TAG_BYTES = 4;
const TAG_HEX = TAG_BYTES * 2;
export const SECRET_FILE = 'tenancy.key';
const SECRET_BYTES = 32;
export const MIN_SECRET_BYTES = 16;
/**
 * Internal keys remembered per tenant. An HMAC costs microseconds; an engine looks the same
 * prefixes up again and again (a 128k-token chain is 8,192 keys). The memo is the tenant's own:
 * it holds only keys this tenant's callers sent, so it tells no tenant anything of another.
 */
export const KEY_MEMO = 32_768;

export class TenantKeys {
  /** Hex tag of the tenant's keys. */
  readonly tag: string;
  private readonly salt: Buffer;
  private readonly memo = new Map<Key, Key>();

  constructor(secret: Uint8Array, name: string) {
    this.salt = createHmac('sha256', secret).update(`kvtier-tenant-salt\0${name}`).digest();
    this.tag = createHmac('sha256', secret)
      .update(`kvtier-tenant-tag\0${name}`)
      .digest()
      .subarray(0, TAG_BYTES)
      .toString('hex');
  }

  /** The internal key of a key the tenant's client sent (validated as every key is). */
  internal(key: KeyLike): Key {
    const hex = toKey(key);
    let internal = this.memo.get(hex);
    if (internal !== undefined) return internal;
    const bytes = Buffer.from(hex, 'hex');
    const mac = createHmac('sha256', this.salt).update(bytes).digest();
    internal = this.tag + mac.toString('hex', 0, bytes.length - TAG_BYTES);
    if (this.memo.size >= KEY_MEMO) this.memo.delete(this.memo.keys().next().value!);
    this.memo.set(hex, internal);
    return internal;
  }

  internalAll(keys: readonly KeyLike[]): Key[] {
    return keys.map((k) => this.internal(k));
  }
}

/** The tag part of an internal key (any string: 'landing' names give no tenant's tag). */
export function tagOf(key: Key): string {
  return key.slice(0, TAG_HEX);
}

/**
 * The warehouse secret: the given one, else the file tier directory's (made there on first open),
 * else a random one for this open only. `write` persists a made one once the store is open.
 */
export async function loadSecret(
  given: Uint8Array | undefined,
  dir: string | undefined,
): Promise<{ secret: Buffer; write?: () => Promise<void> }> {
  if (given !== undefined) return { secret: Buffer.from(given) };
  if (dir === undefined) return { secret: randomBytes(SECRET_BYTES) };
  const path = join(dir, SECRET_FILE);
  try {
    const found = await readFile(path);
    if (found.length < MIN_SECRET_BYTES) {
      throw new KvtierError('KVTIER_CORRUPT', `${path} holds ${found.length} bytes, not a secret`);
    }
    return { secret: found };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
      throw fromSystemError(e, `cannot read ${path}`);
  }
  const secret = randomBytes(SECRET_BYTES);
  return {
    secret,
    write: async () => {
      try {
        // 'wx': two stores racing for one directory cannot both win (the file tier's lock
        // refuses the second anyway).
        await writeFile(path, secret, { mode: 0o600, flag: 'wx' });
      } catch (e) {
        throw fromSystemError(e, `cannot write ${path}`);
      }
    },
  };
}
