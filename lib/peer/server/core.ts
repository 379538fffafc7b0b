/**
 * What the server's parts share: the transport and its receive areas, the send-region pool, the
 * landing slots, the RDMA endpoint, the work in flight, and the few ways a handler answers (a
 * reply, an ERROR that closes the connection, a failed request's INTERNAL error).
 */
import { InFlight } from '../../core/inflight.js';
import { native, type NativeTarget, type NativeVerbs, type NetEvent } from '../../core/native.js';
import { Region } from '../../core/region.js';
import type { Key } from '../../keys/keys.js';
import { Landing } from '../landing.js';
import { Net, type ConnHandler } from '../net.js';
import {
  encodeError,
  ErrorKind,
  frame,
  maxBatchFor,
  MsgType,
  type Placement,
  RequestFlag,
  Status,
} from '../protocol.js';
import type { TransportChoice } from '../transports.js';
import type { ConnState } from './conn.js';
import type { LogFn, PeerServerOptions } from './options.js';
import { RegionPool } from './region-pool.js';

/** Receive areas per server. */
const AREAS = 16;

export class ServerCore {
  readonly net: Net;
  readonly log: LogFn;
  readonly maxBatch: number;
  readonly pool: RegionPool;
  readonly landing: Landing;
  /** The RDMA endpoint when this server offers verbs: registrations and responder queue pairs. */
  readonly verbs: NativeVerbs | undefined;
  /** Requests being served: shutdown waits for them. */
  readonly work = new InFlight();
  /** Answers handed to the transport and not yet out: shutdown lets them go out first. */
  readonly sends = new InFlight();
  /** Connections accepted and not yet closed (their close events delivered). */
  readonly open = new InFlight();
  readonly putCounts = { landed: 0, placed: 0, copied: 0 };
  /** ERROR frames sent, by the ErrorKind they carried (for metrics). */
  readonly errorsSent = new Map<number, number>();
  readonly listener: number;
  readonly port: number;
  shuttingDown = false;
  /** Receive areas: put payloads land here instead of in fresh allocations. */
  private readonly areas: Region;
  private readonly areaBytes: number;
  private nextToken = 1;

  constructor(
    readonly options: PeerServerOptions,
    readonly transport: TransportChoice,
    onAccept: (conn: number, remote: string) => ConnHandler,
  ) {
    const wh = options.warehouse;
    this.log = options.log ?? (() => {});
    this.maxBatch = maxBatchFor(wh.blockBytes);
    this.pool = new RegionPool(Math.max(64 << 20, 4 * wh.blockBytes));
    this.areaBytes =
      wh.blockBytes * Math.max(1, Math.min(this.maxBatch, Math.floor((4 << 20) / wh.blockBytes)));
    this.areas = Region.allocate(AREAS * this.areaBytes, { pin: false });
    this.areas.inFlight.begin(); // the transport may write into it until it is closed
    // A server's queue pairs answer the client's READs and WRITEs; its memory is lent per use.
    this.verbs = transport.verbs ? new (native().NativeVerbs)({ role: 'server' }) : undefined;
    this.net = new Net({
      maxConnections: options.maxConnections ?? 256,
      maxHandshakes: options.maxHandshakes ?? 64,
      payloadTimeoutMs: options.payloadTimeoutMs ?? 30_000,
      onAccept,
      onRefused: (text, errno) =>
        this.log('connection_refused', {
          remote: text,
          reason: errno ? text : 'too many connections',
        }),
      onHandlerError: (e) => this.log('handler_error', { error: String(e) }),
    });
    try {
      const bound = this.net.listen(options.host, options.port);
      this.listener = bound.id;
      this.port = bound.port;
    } catch (e) {
      this.net.close();
      this.verbs?.close();
      throw e;
    }
    this.landing = new Landing(this.net, wh, options.landingIdleMs);
    for (let a = 0; a < AREAS; a++) this.provide(a);
    this.net.ref();
  }

  get blockBytes(): number {
    return this.options.warehouse.blockBytes;
  }

  get queueLimit(): number {
    return this.options.maxQueuedBytes ?? 64 << 20;
  }

  /** Hands a receive area (back) to the transport. */
  provide(area: number): void {
    if (this.areas.closed) return;
    this.net.provideArea(this.areas, area * this.areaBytes, this.areaBytes, area);
  }

  /** The first `bytes` of a receive area, where a frame's payload arrived. */
  areaView(area: number, bytes: number): Uint8Array {
    return this.areas.view(area * this.areaBytes, bytes);
  }

  /** The bytes of a request's payload: in a receive area, or a buffer of its own. */
  payloadOf(ev: NetEvent, bytes: number): Uint8Array | undefined {
    return ev.area !== undefined ? this.areaView(ev.area, bytes) : ev.payload;
  }

  /** Sends an answer whose bytes go out from memory the caller holds until `sent` resolves. */
  sendHeld(
    state: ConnState,
    head: Buffer,
    targets: NativeTarget[],
    spans: Float64Array,
  ): Promise<void> {
    const token = this.nextToken++;
    this.sends.begin();
    const sent = new Promise<void>((resolve) =>
      state.sending.set(token, () => {
        this.sends.end();
        resolve();
      }),
    );
    try {
      this.net.send(state.id, head, targets, spans, token, true);
    } catch (e) {
      state.sending.get(token)?.();
      state.sending.delete(token);
      throw e;
    }
    return sent;
  }

  /** Gives back a send or receive region (its inFlight taken by whoever took it). */
  release(r: Region): void {
    r.inFlight.end();
    this.pool.give(r);
  }

  /** Answers with an ERROR frame and closes the connection (the frame is sent first). */
  drop(state: ConnState, kind: number, message: string): void {
    if (state.phase === 'closed') return;
    this.log('connection_dropped', { conn: state.id, remote: state.remote, reason: message });
    this.countError(kind);
    this.net.send(state.id, frame(MsgType.ERROR, 0, encodeError(kind, message)));
    this.net.closeConnection(state.id, message);
    state.phase = 'closed';
  }

  /** Refuses one request with an ERROR frame; the connection goes on. */
  refuse(state: ConnState, rid: number, kind: number, message: string): void {
    this.countError(kind);
    this.net.send(state.id, frame(MsgType.ERROR, rid, encodeError(kind, message)));
  }

  private countError(kind: number): void {
    this.errorsSent.set(kind, (this.errorsSent.get(kind) ?? 0) + 1);
  }

  reply(state: ConnState, type: number, rid: number, meta: Buffer): void {
    if (state.phase !== 'closed') this.net.send(state.id, frame(type, rid, meta));
  }

  /** A GET's answer is queued: its answer share of what the request holds goes back. */
  answered(state: ConnState, rid: number): void {
    const f = state.answered.get(rid);
    state.answered.delete(rid);
    f?.();
  }

  /**
   * Keeps a request's work counted (so shutdown waits for it) and answers a failure with an
   * INTERNAL error frame on its connection, unless the connection is gone.
   */
  track(state: ConnState, type: number, rid: number, work: Promise<void>): Promise<void> {
    this.work.begin();
    return work
      .catch((e: unknown) => {
        this.log('request_failed', { conn: state.id, type, error: String(e) });
        if (state.phase !== 'closed') {
          this.refuse(state, rid, ErrorKind.INTERNAL, (e as Error).message);
        }
      })
      .finally(() => this.work.end());
  }

  /** Whether `state`'s store can make puts durable (a tenant's view may not). */
  canPersist(state: ConnState): boolean {
    const slots = state.store?.hostSlots;
    return slots?.persist !== undefined && slots.persists === true;
  }

  /** Whether a request is a put that must be durable before it is answered. */
  durable(type: number, flags: number): boolean {
    if (type !== MsgType.PUT && type !== MsgType.PUT_OFFER) return false;
    return (this.options.durablePuts ?? false) || (flags & RequestFlag.DURABLE) !== 0;
  }

  /**
   * A durable put's answer: its blocks are stored however they arrived; this writes them down to
   * the file tier and syncs it (Warehouse.persist). Only keys whose synced file copy is there keep
   * OK or PRESENT; the others answer REJECTED, so nothing is acknowledged that a crash could lose.
   */
  async persisted(state: ConnState, keys: Key[], statuses: number[]): Promise<number[]> {
    const safe = await state.store!.hostSlots!.persist!(keys);
    return statuses.map((x, i) =>
      safe[i] || (x !== Status.OK && x !== Status.PRESENT) ? x : Status.REJECTED,
    );
  }

  /**
   * Where a block of host memory can be read ('read': remote read only) or written ('write') by
   * the client's RDMA. The rkey covers the whole registered region, not the block: the NIC
   * checks only the region's bounds (docs/protocol.md, "Access").
   */
  placement(target: NativeTarget, offset: number, access: 'read' | 'write'): Placement {
    const r = this.verbs!.register(target, access);
    return { address: r.address + offset, rkey: r.rkey };
  }

  /** After the transport closed: lets go of the areas, the pool and the RDMA endpoint. */
  async closeMemory(): Promise<void> {
    this.verbs?.close();
    await this.pool.close();
    this.areas.inFlight.end();
    await this.areas.close();
  }
}
