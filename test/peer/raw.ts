/**
 * A minimal client written from docs/protocol.md with node:net and node:crypto only, so tests can
 * send what the real client never would: wrong versions, truncated and oversized frames.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';

export interface RawFrame {
  type: number;
  requestId: number;
  meta: Buffer;
  payload: Buffer;
}

export function rawFrame(
  type: number,
  requestId: number,
  meta: Buffer,
  payload: Buffer = Buffer.alloc(0),
  declaredPayload = payload.length,
  flags = 0,
): Buffer {
  const h = Buffer.alloc(24);
  h.write('KVTP', 0, 'latin1');
  h.writeUInt8(type, 4);
  h.writeUInt8(flags, 5);
  h.writeUInt32LE(requestId, 8);
  h.writeUInt32LE(meta.length, 12);
  h.writeBigUInt64LE(BigInt(declaredPayload), 16);
  return Buffer.concat([h, meta, payload]);
}

export class RawPeer {
  private buf = Buffer.alloc(0);
  private waiting: (() => void) | undefined;
  closed = false;
  readonly ended: Promise<void>;

  private constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiting?.();
    });
    this.ended = new Promise((r) => {
      const done = (): void => {
        this.closed = true;
        this.waiting?.();
        r();
      };
      socket.on('close', done);
      socket.on('error', () => {});
    });
  }

  static open(port: number): Promise<RawPeer> {
    return new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port }, () => resolve(new RawPeer(s)));
      s.once('error', reject);
    });
  }

  send(b: Buffer): void {
    this.socket.write(b);
  }

  /** The next frame, or undefined once the server closed the connection. */
  async next(): Promise<RawFrame | undefined> {
    for (;;) {
      if (this.buf.length >= 24) {
        const metaLen = this.buf.readUInt32LE(12);
        const payLen = Number(this.buf.readBigUInt64LE(16));
        const total = 24 + metaLen + payLen;
        if (this.buf.length >= total) {
          const f: RawFrame = {
            type: this.buf.readUInt8(4),
            requestId: this.buf.readUInt32LE(8),
            meta: this.buf.subarray(24, 24 + metaLen),
            payload: this.buf.subarray(24 + metaLen, total),
          };
          this.buf = this.buf.subarray(total);
          return f;
        }
      }
      if (this.closed) return undefined;
      await new Promise<void>((r) => (this.waiting = r));
      this.waiting = undefined;
    }
  }

  /** HELLO, CHALLENGE, AUTH, READY; returns the server's limits, or the ERROR frame it got. */
  async handshake(
    secret: string,
    options: { version?: number; blockBytes?: number; transport?: number } = {},
  ): Promise<
    | {
        blockBytes: number;
        maxBatch: number;
        maxPayload: number;
        capabilities: number;
        maxMeta: number;
      }
    | RawFrame
    | undefined
  > {
    const clientNonce = randomBytes(32);
    const hello = Buffer.alloc(48);
    hello.writeUInt16LE(options.version ?? 1, 0);
    hello.writeUInt32LE(1, 4);
    hello.writeBigUInt64LE(BigInt(options.blockBytes ?? 0), 8);
    clientNonce.copy(hello, 16);
    this.send(rawFrame(0x01, 0, hello));
    const ch = await this.next();
    if (!ch || ch.type !== 0x02) return ch;
    const serverNonce = ch.meta.subarray(32, 64);
    const auth = Buffer.alloc(40);
    createHmac('sha256', secret)
      .update('kvtier v1 client')
      .update(serverNonce)
      .update(clientNonce)
      .digest()
      .copy(auth, 0);
    auth.writeUInt32LE(options.transport ?? 0, 32);
    this.send(rawFrame(0x03, 0, auth));
    const ready = await this.next();
    if (!ready || ready.type !== 0x04) return ready;
    const expected = createHmac('sha256', secret)
      .update('kvtier v1 server')
      .update(clientNonce)
      .update(serverNonce)
      .digest();
    if (!expected.equals(ready.meta.subarray(0, 32))) throw new Error('server proof mismatch');
    return {
      blockBytes: Number(ch.meta.readBigUInt64LE(8)),
      maxBatch: ch.meta.readUInt32LE(16),
      maxPayload: Number(ch.meta.readBigUInt64LE(24)),
      capabilities: ch.meta.readUInt32LE(4),
      maxMeta: ch.meta.readUInt32LE(20),
    };
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A batch request's metadata for these keys (hex, 32 bytes each). */
export function keysMeta(keys: string[], count = keys.length): Buffer {
  const out = Buffer.alloc(8 + keys.length * 40);
  out.writeUInt32LE(count, 0);
  keys.forEach((k, i) => {
    const n = out.write(k, 8 + i * 40 + 8, 32, 'hex');
    out.writeUInt8(n, 8 + i * 40);
  });
  return out;
}
