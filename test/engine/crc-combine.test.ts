/** CRC-32C combining agrees with the addon's CRC of the whole, whatever the cut. */
import { describe, expect, it } from 'vitest';

import { crc32cCombine, crc32cOfPieces } from '../../lib/engine-channel/crc-combine.js';
import { native } from '../../lib/core/native.js';
import { randomBytes } from '../helpers.js';

describe('crc32cCombine', () => {
  it('gives the CRC of the concatenation for pieces of many lengths', () => {
    const crc = (b: Uint8Array): number => native().crc32c(b);
    const data = randomBytes(70_000);
    for (const cut of [0, 1, 3, 7, 8, 255, 4096, 32768, 69_999, 70_000]) {
      const a = data.subarray(0, cut);
      const b = data.subarray(cut);
      expect(crc32cCombine(crc(a), crc(b), b.length), `cut at ${cut}`).toBe(crc(data));
    }
    const lengths = [4096, 4096, 100, 32768, 1, 28939];
    const pieces: number[] = [];
    let at = 0;
    for (const l of lengths) {
      pieces.push(crc(data.subarray(at, at + l)));
      at += l;
    }
    expect(crc32cOfPieces(pieces, lengths)).toBe(crc(data));
  });
});
