import { describe, expect, it } from 'vitest';

import { KvtierError } from '../../lib/core/errors.js';
import {
  decodeAuth,
  decodeChallenge,
  decodeHello,
  decodeReady,
  decodeVerbsAddress,
  encodeAuth,
  encodeChallenge,
  encodeHello,
  encodeReady,
  encodeVerbsAddress,
} from '../../lib/peer/handshake-codec.js';

const nonceA = Buffer.alloc(32, 0xa5);
const nonceB = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
const proof = Buffer.from(Array.from({ length: 32 }, (_, i) => 255 - i));

function protocolCode(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(KvtierError);
    return (e as KvtierError).code;
  }
  return undefined;
}

describe('handshake codecs (docs/protocol.md, Handshake)', () => {
  it('HELLO: the documented 48 bytes, and back', () => {
    const hello = { version: 1, capabilities: 3, blockBytes: 1 << 20, clientNonce: nonceA };
    const bytes = encodeHello(hello);
    // Written from the table: version u16 @0, reserved @2, caps u32 @4, blockBytes u64 @8, nonce @16.
    const want = Buffer.alloc(48);
    want.writeUInt16LE(1, 0);
    want.writeUInt32LE(3, 4);
    want.writeBigUInt64LE(1n << 20n, 8);
    nonceA.copy(want, 16);
    expect(bytes.equals(want)).toBe(true);
    expect(decodeHello(bytes)).toEqual(hello);
  });

  it('CHALLENGE: the documented 64 bytes, and back', () => {
    const c = {
      version: 1,
      capabilities: 0x0f,
      blockBytes: 4096,
      maxBatch: 1024,
      maxMeta: 8 + 40 * 1024,
      maxPayload: 1024 * 4096,
      serverNonce: nonceB,
    };
    const bytes = encodeChallenge(c);
    const want = Buffer.alloc(64);
    want.writeUInt16LE(1, 0);
    want.writeUInt32LE(0x0f, 4);
    want.writeBigUInt64LE(4096n, 8);
    want.writeUInt32LE(1024, 16);
    want.writeUInt32LE(8 + 40 * 1024, 20);
    want.writeBigUInt64LE(BigInt(1024 * 4096), 24);
    nonceB.copy(want, 32);
    expect(bytes.equals(want)).toBe(true);
    expect(decodeChallenge(bytes)).toEqual(c);
  });

  it('AUTH and READY: proof then transport, 40 bytes, and back', () => {
    for (const [encode, decode] of [
      [encodeAuth, decodeAuth],
      [encodeReady, decodeReady],
    ] as const) {
      const bytes = encode({ proof, transport: 1 });
      const want = Buffer.alloc(40);
      proof.copy(want, 0);
      want.writeUInt32LE(1, 32);
      expect(bytes.equals(want)).toBe(true);
      const back = decode(bytes);
      expect(back.transport).toBe(1);
      expect(Buffer.from(back.proof).equals(proof)).toBe(true);
    }
  });

  it('a queue pair address is 28 bytes both ways', () => {
    const address = Buffer.from(Array.from({ length: 28 }, (_, i) => i * 3));
    expect(decodeVerbsAddress(encodeVerbsAddress(address)).equals(address)).toBe(true);
    expect(protocolCode(() => encodeVerbsAddress(Buffer.alloc(27)))).toBe('KVTIER_PROTOCOL');
    expect(protocolCode(() => decodeVerbsAddress(Buffer.alloc(29)))).toBe('KVTIER_PROTOCOL');
  });

  it('refuses truncated and oversized metadata with KVTIER_PROTOCOL, before reading a field', () => {
    const decoders: [(m: Uint8Array) => unknown, number][] = [
      [decodeHello, 48],
      [decodeChallenge, 64],
      [decodeAuth, 40],
      [decodeReady, 40],
      [decodeVerbsAddress, 28],
    ];
    for (const [decode, size] of decoders) {
      for (const n of [0, 1, size - 1, size + 1, 4096]) {
        expect(
          protocolCode(() => decode(Buffer.alloc(n))),
          `${n} of ${size} bytes`,
        ).toBe('KVTIER_PROTOCOL');
      }
      expect(protocolCode(() => decode(new Uint8Array(size)))).toBeUndefined();
    }
  });

  it('refuses nonces and proofs of the wrong size when encoding', () => {
    const short = Buffer.alloc(31);
    expect(
      protocolCode(() =>
        encodeHello({ version: 1, capabilities: 1, blockBytes: 0, clientNonce: short }),
      ),
    ).toBe('KVTIER_PROTOCOL');
    expect(
      protocolCode(() =>
        encodeChallenge({
          version: 1,
          capabilities: 1,
          blockBytes: 1,
          maxBatch: 1,
          maxMeta: 48,
          maxPayload: 1,
          serverNonce: Buffer.alloc(33),
        }),
      ),
    ).toBe('KVTIER_PROTOCOL');
    expect(protocolCode(() => encodeAuth({ proof: short, transport: 0 }))).toBe('KVTIER_PROTOCOL');
    expect(protocolCode(() => encodeReady({ proof: short, transport: 0 }))).toBe('KVTIER_PROTOCOL');
  });

  it('decoded nonces are copies: the receive buffer may be reused', () => {
    const bytes = encodeHello({ version: 1, capabilities: 1, blockBytes: 0, clientNonce: nonceA });
    const h = decodeHello(bytes);
    bytes.fill(0);
    expect(h.clientNonce.equals(nonceA)).toBe(true);
  });
});
