import { createHash } from 'node:crypto';

/** Block content derived from its key, so every read can be checked bit for bit. */
export function blockFor(key: string, bytes: number, into?: Buffer, at = 0): Buffer {
  const out = into ?? Buffer.alloc(bytes);
  let seed = createHash('sha256').update(key).digest();
  for (let off = 0; off < bytes; off += 32) {
    seed.copy(out, at + off, 0, Math.min(32, bytes - off));
    if ((off & 1023) === 992) seed = createHash('sha256').update(seed).digest();
  }
  return out;
}

export function blocksFor(keys: readonly string[], bytes: number): Buffer {
  const out = Buffer.alloc(keys.length * bytes);
  keys.forEach((k, i) => blockFor(k, bytes, out, i * bytes));
  return out;
}
