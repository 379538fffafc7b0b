import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { randomBytes } from 'node:crypto';

import { native } from '../../lib/core/native.js';
import { chainKeys, KeyChain, namespaceRoot, toKey } from '../../lib/index.js';

/** The chain computed the slow, obvious way (docs/keys.md), to check the native one against. */
function reference(tokens: number[], blockTokens: number, namespace: string): string[] {
  let parent = createHash('sha256').update('kvtier-key-v1\0').update(namespace, 'utf8').digest();
  const keys: string[] = [];
  for (let i = 0; i + blockTokens <= tokens.length; i += blockTokens) {
    const block = Buffer.alloc(blockTokens * 4);
    for (let j = 0; j < blockTokens; j++) block.writeUInt32LE(tokens[i + j]!, j * 4);
    parent = createHash('sha256').update(parent).update(block).digest();
    keys.push(parent.toString('hex'));
  }
  return keys;
}

describe('chainKeys', () => {
  it('matches the documented test vectors', () => {
    expect(namespaceRoot('').toString('hex')).toBe(
      'ea385ad889e0c09372a1376cdd30fe67973f540653e05a70fe11648772c84bc6',
    );
    expect(chainKeys([1, 2, 3, 4, 5, 6, 7, 8], { blockTokens: 4 }).keys()).toEqual([
      '2aed14294497603b2af0edd1687418cac16edc55a5a0870552a8d24f104adb8d',
      '84b3cac8df2e1657b7e27129463e6acc73af919b797b1820fdee41bd8e482c23',
    ]);
    expect(
      chainKeys([1, 2, 3, 4, 5, 6, 7, 8, 9], { blockTokens: 4, namespace: 'tenant-a' }).keys(),
    ).toEqual([
      '084f0d15c836c4465d3e35b61511a55959bab4474f531077118bedc7a7b3ce6b',
      'dae99262a19b352779fdb8380bac8e68b67db426250a9e240866cf7e06eb371d',
    ]);
    expect(chainKeys([4294967295, 0, 65536], { blockTokens: 3 }).keys()).toEqual([
      '442d627742e6e507bf8e001dd3e5d374f5b74749b3ecb1f69e27e81d2bd534a8',
    ]);
  });

  it('agrees with an independent implementation on random input', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 0xffffffff }), { maxLength: 200 }),
        fc.integer({ min: 1, max: 20 }),
        fc.string({ maxLength: 12 }),
        (tokens, blockTokens, namespace) => {
          const keys = chainKeys(tokens, { blockTokens, namespace }).keys();
          expect(keys).toEqual(reference(tokens, blockTokens, namespace));
          expect(chainKeys(Uint32Array.from(tokens), { blockTokens, namespace }).keys()).toEqual(
            keys,
          );
        },
      ),
      { numRuns: 200 },
    );
  });

  it('continues a chain from a parent key, and keeps namespaces apart', () => {
    const tokens = Array.from({ length: 64 }, (_, i) => i * 31);
    const whole = chainKeys(tokens, { blockTokens: 8 }).keys();
    const tail = chainKeys(tokens.slice(32), { blockTokens: 8, parent: whole[3]! }).keys();
    expect(tail).toEqual(whole.slice(4));
    const other = chainKeys(tokens, { blockTokens: 8, namespace: 'b' }).keys();
    expect(other.some((k) => whole.includes(k))).toBe(false);
  });

  it('rejects bad tokens, block sizes and keys', () => {
    for (const blockTokens of [0, -1, 1.5, Number.NaN]) {
      expect(() => chainKeys([1, 2], { blockTokens })).toThrow(
        expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }),
      );
    }
    const valueOf = { valueOf: (): number => 7 };
    for (const bad of [
      [-1],
      [1.5],
      [2 ** 32],
      [Number.NaN],
      [Infinity],
      ['7'],
      [null],
      [undefined],
      [7n],
      [valueOf],
    ]) {
      expect(() => chainKeys(bad as number[], { blockTokens: 1 })).toThrow(
        expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }),
      );
    }
    for (const k of ['', 'ab', 'x'.repeat(64), 'a'.repeat(66), 'a'.repeat(33)]) {
      expect(() => toKey(k)).toThrow(expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }));
    }
    expect(() => toKey(new Uint8Array(15))).toThrow(
      expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }),
    );
    expect(toKey(new Uint8Array(16).fill(0xab))).toBe('ab'.repeat(16));
    expect(toKey('AB'.repeat(32))).toBe('ab'.repeat(32));
  });
});

describe('KeyChain hex form', () => {
  it('is byte for byte Buffer.toString("hex") of the binary form, at every length', () => {
    // Lengths around the 64-key runs KeyChain encodes at a time, and keys with every byte value.
    for (const keys of [0, 1, 2, 15, 16, 63, 64, 65, 127, 128, 129, 1000, 8192]) {
      const bytes = randomBytes(keys * 32);
      const chain = new KeyChain(bytes);
      const hex = bytes.toString('hex');
      expect(chain.keys().length).toBe(keys);
      expect(chain.keys().join('')).toBe(hex);
      for (let i = 0; i < keys; i++) {
        expect(chain.key(i)).toBe(bytes.subarray(i * 32, i * 32 + 32).toString('hex'));
      }
      expect([...chain]).toEqual(chain.keys());
    }
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    expect(new KeyChain(all).keys().join('')).toBe(all.toString('hex'));
  });

  it('agrees with Buffer.toString("hex") on random bytes, offsets and lengths', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 9000, size: 'max' }),
        fc.nat(),
        fc.nat(),
        (data, a, b) => {
          const bytes = Buffer.from(data);
          const start = bytes.length === 0 ? 0 : a % (bytes.length + 1);
          const end = start + (bytes.length === 0 ? 0 : b % (bytes.length - start + 1));
          expect(native().hex(bytes, start, end)).toBe(bytes.toString('hex', start, end));
          expect(native().hex(bytes)).toBe(bytes.toString('hex'));
          // A view into a larger buffer: the encoder starts at the view, not the ArrayBuffer.
          const view = new Uint8Array(bytes.buffer, bytes.byteOffset + start, end - start);
          expect(native().hex(view)).toBe(bytes.toString('hex', start, end));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('refuses ranges outside the bytes', () => {
    const bytes = Buffer.alloc(8);
    for (const [start, end] of [
      [4, 2],
      [0, 9],
      [9, 9],
      [-1, 4],
      [0.5, 4],
    ] as const) {
      expect(() => native().hex(bytes, start, end)).toThrow(
        expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }),
      );
    }
    expect(() => native().hex('not bytes' as unknown as Uint8Array)).toThrow(
      expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }),
    );
  });
});
