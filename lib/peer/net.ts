/**
 * The JavaScript side of one native TCP transport: routes the batches of events its thread
 * delivers to a handler per connection. Handlers must not throw into the native callback; a
 * handler that does is logged through onHandlerError and its connection closed.
 */
import {
  native,
  type NativeTarget,
  type NativeTcpTransport,
  type NetEvent,
  type NetStats,
} from '../core/native.js';
import { nativeTargetOf, type Target } from '../core/engine.js';
import type { Region } from '../core/region.js';

export const EventKind = {
  ACCEPTED: 1,
  CONNECTED: 2,
  FRAME: 3,
  SENT: 4,
  CLOSED: 5,
  REFUSED: 6,
} as const;

export interface ConnHandler {
  onConnected?(): void;
  onFrame(event: NetEvent): void;
  onSent?(token: number): void;
  /** Called once; after it the transport no longer touches any buffer sent on the connection. */
  onClose(errno: number, why: string): void;
}

export interface NetOptions {
  /** Authenticated connections (their limits raised) open at once. */
  maxConnections?: number;
  /** Accepted connections not yet authenticated; the oldest makes room for a new one. */
  maxHandshakes?: number;
  /** An authenticated connection whose partly received frame stays idle this long is closed. */
  payloadTimeoutMs?: number;
  onAccept?: (conn: number, remote: string) => ConnHandler;
  onRefused?: (text: string, errno: number | undefined) => void;
  onHandlerError?: (e: unknown) => void;
}

export class Net {
  private readonly transport: NativeTcpTransport;
  private readonly handlers = new Map<number, ConnHandler>();
  private refs = 0;
  private closed = false;

  constructor(private readonly options: NetOptions = {}) {
    const { maxConnections, maxHandshakes, payloadTimeoutMs } = options;
    this.transport = new (native().NativeTcpTransport)(
      {
        ...(maxConnections !== undefined ? { maxConnections } : {}),
        ...(maxHandshakes !== undefined ? { maxHandshakes } : {}),
        ...(payloadTimeoutMs !== undefined ? { payloadTimeoutMs } : {}),
      },
      (events) => this.dispatch(events),
    );
  }

  listen(host: string, port: number): { id: number; port: number } {
    return this.transport.listen(host, port, 512);
  }

  closeListener(id: number): void {
    this.transport.closeListener(id);
  }

  connect(host: string, port: number, handler: ConnHandler): number {
    const id = this.transport.connect(host, port);
    this.handlers.set(id, handler);
    return id;
  }

  send(
    conn: number,
    head: Uint8Array,
    targets: NativeTarget[] = [],
    spans?: Float64Array,
    token = 0,
    notify = false,
    expect?: { type: number; requestId: number; spans: Float64Array },
  ): void {
    if (expect) {
      this.transport.send(
        conn,
        head,
        targets,
        spans,
        token,
        notify,
        expect.type,
        expect.requestId,
        expect.spans,
      );
    } else {
      this.transport.send(conn, head, targets, spans, token, notify);
    }
  }

  /**
   * Frame limits (raising them marks an accepted connection authenticated), and the bytes
   * JavaScript may hold plus the bytes queued to write before reading pauses; frames of
   * `answer.type` hold `answer.unit` bytes per key for their answer until released.
   */
  setLimits(
    conn: number,
    maxMeta: number,
    maxPayload: number,
    maxQueued?: number,
    answer?: { type: number; unit: number },
  ): void {
    if (answer) {
      this.transport.setLimits(conn, maxMeta, maxPayload, maxQueued, answer.type, answer.unit);
    } else {
      this.transport.setLimits(conn, maxMeta, maxPayload, maxQueued);
    }
  }

  stats(): NetStats {
    return this.transport.stats();
  }

  /** Memory the transport may receive one payload into; frames received there name `token`. */
  provideArea(region: Region, offset: number, length: number, token: number): void {
    if (!this.closed) this.transport.provide(region.native, offset, length, token);
  }

  /** A landing piece (TcpTransport::Land): blocks of `length` bytes of frames of `type` land here. */
  land(target: Target, offset: number, length: number, token: number, type: number): void {
    if (!this.closed) this.transport.land(nativeTargetOf(target), offset, length, token, type);
  }

  /** Takes back the landing pieces no frame holds; their tokens. */
  unland(): number[] {
    return this.closed ? [] : this.transport.unland();
  }

  /** JavaScript is done with `bytes` it held of what `conn` received (backpressure). */
  release(conn: number, bytes: number): void {
    if (!this.closed) this.transport.release(conn, bytes);
  }

  closeConnection(conn: number, why: string): void {
    if (!this.closed) this.transport.closeConnection(conn, why);
  }

  /** Keeps the process alive while something waits on the network. */
  ref(): void {
    if (this.refs++ === 0 && !this.closed) this.transport.ref();
  }

  unref(): void {
    if (this.refs > 0 && --this.refs === 0 && !this.closed) this.transport.unref();
  }

  /** Closes every socket; the handlers hear onClose before this returns. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.transport.close();
    // The thread is joined: whatever it had not delivered is gone, so close the rest here.
    for (const [id, h] of [...this.handlers]) {
      this.handlers.delete(id);
      this.guard(() => h.onClose(0, 'the transport was closed'));
    }
  }

  private guard(f: () => void): void {
    try {
      f();
    } catch (e) {
      this.options.onHandlerError?.(e);
    }
  }

  private dispatch(events: NetEvent[]): void {
    for (const ev of events) {
      switch (ev.kind) {
        case EventKind.ACCEPTED: {
          const accept = this.options.onAccept;
          if (!accept) {
            this.transport.closeConnection(ev.conn, 'not accepting');
            break;
          }
          this.guard(() => this.handlers.set(ev.conn, accept(ev.conn, ev.text ?? '')));
          break;
        }
        case EventKind.REFUSED:
          this.guard(() => this.options.onRefused?.(ev.text ?? '', ev.errno));
          break;
        case EventKind.CONNECTED: {
          const h = this.handlers.get(ev.conn);
          if (h) this.guard(() => h.onConnected?.());
          break;
        }
        case EventKind.FRAME: {
          const h = this.handlers.get(ev.conn);
          if (!h) break;
          try {
            h.onFrame(ev);
          } catch (e) {
            this.options.onHandlerError?.(e);
            this.transport.closeConnection(ev.conn, 'handler failed');
          }
          break;
        }
        case EventKind.SENT: {
          const h = this.handlers.get(ev.conn);
          if (h) this.guard(() => h.onSent?.(ev.token ?? 0));
          break;
        }
        case EventKind.CLOSED: {
          const h = this.handlers.get(ev.conn);
          this.handlers.delete(ev.conn);
          if (h) this.guard(() => h.onClose(ev.errno ?? 0, ev.text ?? ''));
          break;
        }
      }
    }
  }
}
