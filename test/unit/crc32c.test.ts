import { randomBytes } from 'node:crypto';

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { native } from '../../lib/core/native.js';

/** Bit-at-a-time CRC-32C: slow, obvious, and independent of the native table and instructions. */
function reference(data: Uint8Array, seed = 0): number {
  let crc = ~seed >>> 0;
  for (const byte of data) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return ~crc >>> 0;
}

describe('crc32c', () => {
  const crc32c = (d: Uint8Array, seed?: number): number => native().crc32c(d, seed);

  it('gives the standard check value', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(0))).toBe(0);
  });

  it('matches a bitwise reference at every length around the three-stream boundaries', () => {
    const data = randomBytes(3 * 4096 * 2 + 64);
    for (const len of [1, 7, 8, 9, 4095, 4096, 12287, 12288, 12289, 24576, 24577, data.length]) {
      for (const start of [0, 1, 3]) {
        const view = data.subarray(start, Math.min(data.length, start + len));
        expect(crc32c(view), `len ${len} start ${start}`).toBe(reference(view));
      }
    }
  });

  it('continues from a seed', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 30_000 }),
        fc.uint8Array({ maxLength: 30_000 }),
        (a, b) => {
          const whole = Buffer.concat([a, b]);
          expect(crc32c(b, crc32c(a))).toBe(crc32c(whole));
          expect(crc32c(whole)).toBe(reference(whole));
        },
      ),
      { numRuns: 30 },
    );
  });
});
