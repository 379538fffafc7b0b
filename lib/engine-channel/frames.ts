/**
 * Frames of the engine channel (docs/engine-channel.md): `u32 bodyLength, u32 headerLength, JSON
 * header, payload`, little-endian. Encoding allocates one buffer per frame for the prefix and
 * header and hands the payload on as it is; decoding keeps chunks as they came and copies a frame
 * out only when it spans chunks.
 */
import { KvtierError } from '../core/errors.js';

/** Largest frame body either side accepts. */
export const MAX_FRAME_BYTES = 64 << 20;

export type Header = Record<string, unknown>;

export interface Frame {
  header: Header;
  payload: Buffer;
}

/** The buffers of one frame, in order (write them back to back). */
export function encodeFrame(header: Header, payload?: Uint8Array): Buffer[] {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const payloadBytes = payload?.byteLength ?? 0;
  const body = 4 + json.length + payloadBytes;
  if (body > MAX_FRAME_BYTES) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `a frame of ${body} bytes exceeds the limit of ${MAX_FRAME_BYTES}`,
    );
  }
  const head = Buffer.allocUnsafe(8 + json.length);
  head.writeUInt32LE(body, 0);
  head.writeUInt32LE(json.length, 4);
  json.copy(head, 8);
  if (payloadBytes === 0) return [head];
  const tail = Buffer.isBuffer(payload)
    ? payload
    : Buffer.from(payload!.buffer, payload!.byteOffset, payload!.byteLength);
  return [head, tail];
}

/** Splits a byte stream into frames. A malformed frame throws KVTIER_BAD_ARGUMENT. */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  /** Adds bytes; returns the frames they complete. */
  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      if (this.buffered < 4) break;
      const body = this.peekU32();
      if (body < 4 || body > MAX_FRAME_BYTES) {
        throw new KvtierError(
          'KVTIER_BAD_ARGUMENT',
          `frame length ${body} is outside [4, ${MAX_FRAME_BYTES}]`,
        );
      }
      if (this.buffered < 4 + body) break;
      const bytes = this.take(4 + body);
      frames.push(parse(bytes, body));
    }
    return frames;
  }

  private peekU32(): number {
    const first = this.chunks[0]!;
    if (first.length >= 4) return first.readUInt32LE(0);
    return Buffer.concat(this.chunks, 4).readUInt32LE(0);
  }

  /** Removes and returns the next `n` bytes (a view when they lie in one chunk). */
  private take(n: number): Buffer {
    this.buffered -= n;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0]!;
      const want = n - at;
      if (c.length <= want) {
        c.copy(out, at);
        at += c.length;
        this.chunks.shift();
      } else {
        c.copy(out, at, 0, want);
        this.chunks[0] = c.subarray(want);
        at += want;
      }
    }
    return out;
  }
}

function parse(bytes: Buffer, body: number): Frame {
  const headerLength = bytes.readUInt32LE(4);
  if (headerLength > body - 4) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `header length ${headerLength} exceeds the frame body of ${body} bytes`,
    );
  }
  let header: unknown;
  try {
    header = JSON.parse(bytes.toString('utf8', 8, 8 + headerLength));
  } catch (e) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'the frame header is not valid JSON', {
      cause: e,
    });
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'the frame header must be a JSON object');
  }
  return { header: header as Header, payload: bytes.subarray(8 + headerLength) };
}

/** Key bytes of a payload as hex keys: `n` keys of `keyBytes` each, back to back. */
export function keysOf(payload: Buffer, n: number, keyBytes: number): string[] {
  const hex = payload.toString('hex');
  const keys = new Array<string>(n);
  const w = keyBytes * 2;
  for (let i = 0; i < n; i++) keys[i] = hex.slice(i * w, i * w + w);
  return keys;
}
