/** The engine channel's frame codec: frames split anywhere across chunks, and malformed ones. */
import { describe, expect, it } from 'vitest';

import {
  encodeFrame,
  FrameReader,
  keysOf,
  MAX_FRAME_BYTES,
} from '../../lib/engine-channel/frames.js';
import { isKvtierError } from '../../lib/core/errors.js';
import { randomBytes } from '../helpers.js';

describe('engine channel frames', () => {
  it('reads back every frame whatever the chunking', () => {
    const frames = Array.from({ length: 20 }, (_, i) => ({
      header: { op: 'save', id: i + 1, blocks: [i, i + 1] },
      payload: randomBytes(i * 37),
    }));
    const stream = Buffer.concat(frames.flatMap((f) => encodeFrame(f.header, f.payload)));
    for (const chunk of [1, 3, 7, 64, 1000, stream.length]) {
      const reader = new FrameReader();
      const out = [];
      for (let at = 0; at < stream.length; at += chunk) {
        out.push(...reader.push(stream.subarray(at, at + chunk)));
      }
      expect(out.length).toBe(frames.length);
      out.forEach((f, i) => {
        expect(f.header).toEqual(frames[i]!.header);
        expect(Buffer.compare(f.payload, frames[i]!.payload)).toBe(0);
      });
    }
  });

  it('refuses a length past the limit, a header past the body, JSON that is not an object', () => {
    const bad = (bytes: Buffer): string => {
      try {
        new FrameReader().push(bytes);
      } catch (e) {
        expect(isKvtierError(e, 'KVTIER_BAD_ARGUMENT')).toBe(true);
        return (e as Error).message;
      }
      throw new Error('accepted');
    };
    const big = Buffer.alloc(8);
    big.writeUInt32LE(MAX_FRAME_BYTES + 1, 0);
    expect(bad(big)).toMatch(/outside/);
    const past = Buffer.alloc(12);
    past.writeUInt32LE(8, 0);
    past.writeUInt32LE(100, 4);
    expect(bad(past)).toMatch(/header length/);
    const arr = Buffer.alloc(11);
    arr.writeUInt32LE(7, 0);
    arr.writeUInt32LE(3, 4);
    arr.write('[1]', 8);
    expect(bad(arr)).toMatch(/object/);
    expect(() => encodeFrame({}, Buffer.alloc(MAX_FRAME_BYTES))).toThrow(/exceeds/);
  });

  it('cuts a payload into keys of the size given', () => {
    const k = randomBytes(3 * 20);
    expect(keysOf(k, 3, 20)).toEqual(
      [0, 1, 2].map((i) => k.subarray(i * 20, i * 20 + 20).toString('hex')),
    );
  });
});
