/**
 * Block content for `kvtier demo`, derived from the block's key so that every byte read back can
 * be checked without keeping a copy.
 *
 * The bytes are the AES-128-CTR keystream under the key: AES key = key bytes [0, 16), counter
 * block = key bytes [16, 32) (a key shorter than 32 bytes is first hashed to 32 with SHA-256).
 * Every byte is a function of the key and its position, so a block from another key, a block
 * shifted by any offset, a torn write or a stale page all fail the comparison. OpenSSL runs it
 * with AES-NI at about a GB/s per core, several times faster than chained SHA-256 in
 * JavaScript, which keeps the demo's own checking from hiding the warehouse's speed.
 */
import { createCipheriv, createHash } from 'node:crypto';

import type { Key } from '../../index.js';

let zeros = Buffer.alloc(0);

function zeroBytes(n: number): Buffer {
  if (zeros.length < n) zeros = Buffer.alloc(n);
  return zeros.subarray(0, n);
}

function cipherFor(key: Key): ReturnType<typeof createCipheriv> {
  let raw = Buffer.from(key, 'hex');
  if (raw.length !== 32) raw = createHash('sha256').update(raw).digest();
  return createCipheriv('aes-128-ctr', raw.subarray(0, 16), raw.subarray(16, 32));
}

/** The `bytes` bytes of the block with this key (a new Buffer). */
export function blockContent(key: Key, bytes: number): Buffer {
  return cipherFor(key).update(zeroBytes(bytes));
}

/** Writes the block's bytes into `into` at `at`. */
export function fillBlock(key: Key, into: Uint8Array, at: number, bytes: number): void {
  into.set(blockContent(key, bytes), at);
}

/**
 * Whether `into[at, at + bytes)` holds exactly the block of `key`. Returns the offset (within the
 * block) of the first wrong byte, or -1 when every byte matches.
 */
export function checkBlock(key: Key, from: Uint8Array, at: number, bytes: number): number {
  const expected = blockContent(key, bytes);
  const got = Buffer.from(from.buffer, from.byteOffset + at, bytes);
  if (expected.equals(got)) return -1;
  for (let i = 0; i < bytes; i++) if (expected[i] !== got[i]) return i;
  return -1;
}
