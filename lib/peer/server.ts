/**
 * PeerServer: serves one Warehouse to remote clients over the peer protocol (docs/protocol.md).
 * The native transport moves the frames; this decides what they mean. A connection that breaks a
 * rule is answered with an ERROR frame and closed; the server and its other clients go on.
 */
import {
  native,
  type NativeTarget,
  type NativeVerbs,
  type NetEvent,
  type NetStats,
} from '../core/native.js';
import { nativeTargetOf } from '../core/engine.js';
import { KvtierError } from '../core/errors.js';
import { badArgument, finite, func, guard, integer, string } from '../core/validate.js';
import { Region } from '../core/region.js';
import type { Reservation, Warehouse } from '../warehouse/warehouse.js';
import type { Key } from '../keys/keys.js';
import { nonce, proofMatches, clientProof, serverProof, type Secret } from './auth.js';
import { Landing } from './landing.js';
import { Net, type ConnHandler } from './net.js';
import {
  AUTH_BYTES,
  Capability,
  CHALLENGE_BYTES,
  decodeKeys,
  decodeResults,
  encodePlacedResults,
  LEASE_MS,
  MAX_LEASES,
  MAX_OFFERS,
  type Placement,
  VERBS_ADDRESS_BYTES,
  encodeError,
  encodeResults,
  ErrorKind,
  frame,
  HELLO_BYTES,
  maxBatchFor,
  maxMetaFor,
  MsgType,
  NONCE_BYTES,
  PROTOCOL_VERSION,
  READY_BYTES,
  Status,
  TransportId,
  RequestFlag,
} from './protocol.js';
import { chooseTransport, type TransportChoice, type TransportOption } from './transports.js';

/** Receive areas per server. */
const AREAS = 16;

export type LogFn = (event: string, fields?: Record<string, unknown>) => void;

export interface PeerServerOptions {
  host: string;
  port: number;
  warehouse: Warehouse;
  secret: Secret;
  transport?: TransportOption;
  /** Authenticated connections open at once; more are refused (default 256). */
  maxConnections?: number;
  /**
   * Connections not yet authenticated, on their own budget (default 64): when it is full, the
   * oldest is closed to make room, so idle sockets cannot lock out a client with the token.
   */
  maxHandshakes?: number;
  /** A connection that has not authenticated by then is closed (default 5 s). */
  handshakeTimeoutMs?: number;
  /**
   * An authenticated connection whose partly received frame gets no byte for this long is
   * closed, freeing the frame's buffer or slots (default 30 s).
   */
  payloadTimeoutMs?: number;
  /** A put offer whose data has not arrived by then closes its connection (default 30 s). */
  offerTimeoutMs?: number;
  /** Landing slots no put used for this long go back to the host tier (default 30 s). */
  landingIdleMs?: number;
  /**
   * Bytes of one connection's requests in progress (their metadata and payload, and for a GET
   * the most answer bytes it can cause, until its answer is queued) plus the answer bytes queued
   * for it to read, beyond which the server stops reading it until they drop to half (default
   * 64 MiB): a client that sends faster than the store takes, or never reads its answers, is
   * held back by TCP rather than buffered without bound.
   */
  maxQueuedBytes?: number;
  /** Blocks lent for an RDMA READ whose RELEASE has not come by then are let go (default 30 s). */
  leaseTimeoutMs?: number;
  /**
   * Every put is durable, as if each carried RequestFlag.DURABLE (`serve --durability sync`);
   * the warehouse needs a file tier.
   */
  durablePuts?: boolean;
  log?: LogFn;
}

interface ConnState {
  id: number;
  remote: string;
  /** 'verbs': authenticated, waiting for VERBS_CONNECT before any request. */
  phase: 'hello' | 'auth' | 'verbs' | 'ready' | 'closed';
  clientNonce?: Buffer;
  serverNonce?: Buffer;
  timer?: NodeJS.Timeout;
  /** Sends in progress, by token: called once the bytes are out or the connection is gone. */
  sending: Map<number, () => void>;
  /** Put offers accepted and waiting for their data, by request id. */
  offers: Map<number, Offer>;
  /**
   * Request ids of offers whose slots are being reserved: counted against MAX_OFFERS from the
   * moment they arrive, so offers sent back to back cannot all pass the check before any is in
   * `offers`.
   */
  offering: Set<number>;
  /** Bytes the transport counts for requests received and not yet answered (NetEvent.held). */
  queued: number;
  /** By request id: hands back a GET's answer share of what it holds, once its answer is queued. */
  answered: Map<number, () => void>;
  /** The responder queue pair of a verbs connection. */
  qp?: number;
  /**
   * Blocks lent to the client's RDMA READs until it sends RELEASE, by request id: each GET with
   * REMOTE_READ claims its id here before it awaits anything, so a repeated id is refused and at
   * most MAX_LEASES are out at once. Calling the function ends the lease (or, while the answer is
   * still being prepared, lets the blocks go as soon as it is sent).
   */
  leases: Map<number, () => void>;
}

/** A block a GET answers with: where it lies and its CRC-32C. */
interface SentBlock {
  target: NativeTarget;
  offset: number;
  checksum: number;
}

interface Offer {
  keys: Key[];
  statuses: number[];
  /** Slots the data is placed into; undefined when it lands in a receive buffer instead. */
  reservation: Reservation | undefined;
  timer: NodeJS.Timeout;
  /** Verbs: the client writes the blocks itself (PUT_DATA then carries REMOTE_WRITTEN). */
  remote: boolean;
  /** Verbs without a reservation: the registered region the client writes into. */
  receive?: Region;
  /** The offer carried RequestFlag.DURABLE: PUT_RESULT waits for the file tier's sync. */
  durable: boolean;
}

/** Send regions are reused by size: allocating and zeroing a fresh one per get would dominate. */
class RegionPool {
  private readonly free = new Map<number, Region[]>();
  private bytes = 0;

  constructor(private readonly limit: number) {}

  take(bytes: number): Region {
    const r = this.free.get(bytes)?.pop();
    if (r) {
      this.bytes -= bytes;
      return r;
    }
    return Region.allocate(bytes, { pin: false });
  }

  give(r: Region): void {
    if (r.closed) return;
    if (this.bytes + r.byteLength > this.limit) {
      void r.close();
      return;
    }
    this.bytes += r.byteLength;
    const list = this.free.get(r.byteLength) ?? [];
    list.push(r);
    this.free.set(r.byteLength, list);
  }

  async close(): Promise<void> {
    const all = [...this.free.values()].flat();
    this.free.clear();
    this.bytes = 0;
    await Promise.all(all.map((r) => r.close()));
  }
}

/**
 * Checks the types of a server's options (reading each inside a guard, so a throwing getter is a
 * bad argument); the object itself is used as given.
 */
function checkServerOptions(options: unknown): void {
  if (typeof options !== 'object' || options === null) {
    throw badArgument('options', 'an object with host, port, warehouse and secret', options);
  }
  const read = (field: string): unknown =>
    guard(`options.${field}`, () => (options as Record<string, unknown>)[field]);
  string(read('host'), 'options.host');
  integer(read('port'), 'options.port', { max: 65535 });
  const warehouse = read('warehouse');
  if (typeof warehouse !== 'object' || warehouse === null) {
    throw badArgument('options.warehouse', 'a Warehouse', warehouse);
  }
  const secret = read('secret');
  if (!guard('options.secret', () => Buffer.isBuffer(secret))) {
    throw badArgument('options.secret', 'a Buffer', secret);
  }
  for (const field of ['maxConnections', 'maxQueuedBytes']) {
    const v = read(field);
    if (v !== undefined) integer(v, `options.${field}`, { min: 1 });
  }
  for (const field of ['handshakeTimeoutMs', 'offerTimeoutMs', 'landingIdleMs', 'leaseTimeoutMs']) {
    const v = read(field);
    if (v !== undefined) finite(v, `options.${field}`, { min: 0 });
  }
  const log = read('log');
  if (log !== undefined) func(log, 'options.log');
}

export class PeerServer {
  readonly host: string;
  readonly port: number;
  readonly transport: TransportChoice;
  readonly maxBatch: number;
  private readonly net: Net;
  private readonly listener: number;
  private readonly conns = new Map<number, ConnState>();
  private readonly work = new Set<Promise<unknown>>();
  private readonly pool: RegionPool;
  /** Receive areas: put payloads land here instead of in fresh allocations. */
  private readonly areas: Region;
  private readonly areaBytes: number;
  private readonly landing: Landing;
  private readonly log: LogFn;
  /** The RDMA endpoint when this server offers verbs: registrations and responder queue pairs. */
  private readonly verbs: NativeVerbs | undefined;
  private nextToken = 1;
  private readonly putCounts = { landed: 0, placed: 0, copied: 0 };
  /**
   * Backpressure: times a connection stopped being read, the most bytes one connection's requests
   * held (maxQueued), and the most answer bytes one had queued for its client to read.
   */
  get backpressure(): { pauses: number; maxQueued: number; maxAnswerQueued: number } {
    const s = this.net.stats();
    return { pauses: s.pauses, maxQueued: s.maxHeld, maxAnswerQueued: s.maxOutQueued };
  }

  /** The transport's counters (backpressure and connection limits). */
  netStats(): NetStats {
    return this.net.stats();
  }
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly options: PeerServerOptions,
    transport: TransportChoice,
  ) {
    const wh = options.warehouse;
    this.transport = transport;
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
      onAccept: (conn, remote) => this.accept(conn, remote),
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
    this.host = options.host;
    this.landing = new Landing(this.net, wh, options.landingIdleMs);
    for (let a = 0; a < AREAS; a++) this.provide(a);
    this.net.ref();
  }

  static start(options: PeerServerOptions): PeerServer {
    checkServerOptions(options);
    const transport = chooseTransport(options.transport ?? 'auto');
    return new PeerServer(options, transport);
  }

  get connections(): number {
    return this.conns.size;
  }

  /**
   * How the blocks of puts reached the store: landed straight in host-tier slots (one step),
   * placed in slots reserved by an offer (two steps), or received elsewhere and copied.
   */
  get putBlocks(): { landed: number; placed: number; copied: number } {
    return { ...this.putCounts };
  }

  private accept(conn: number, remote: string): ConnHandler {
    const state: ConnState = {
      id: conn,
      remote,
      phase: 'hello',
      sending: new Map(),
      offers: new Map(),
      offering: new Set(),
      queued: 0,
      answered: new Map(),
      leases: new Map(),
    };
    this.conns.set(conn, state);
    state.timer = setTimeout(
      () => this.drop(state, ErrorKind.AUTH, 'no authenticated handshake in time'),
      this.options.handshakeTimeoutMs ?? 5000,
    );
    state.timer.unref();
    this.log('connection_open', { conn, remote });
    if (this.closing) this.drop(state, ErrorKind.SHUTTING_DOWN, 'the server is shutting down');
    return {
      onFrame: (ev) => this.onFrame(state, ev),
      onSent: (token) => {
        const done = state.sending.get(token);
        state.sending.delete(token);
        done?.();
      },
      onClose: (errno, why) => {
        clearTimeout(state.timer);
        state.phase = 'closed';
        for (const done of state.sending.values()) done();
        state.sending.clear();
        // The transport let go of the expected placements: the reserved slots are free again.
        for (const offer of state.offers.values()) this.dropOffer(offer);
        state.offers.clear();
        // The client can no longer read what it was lent: the blocks are unpinned.
        for (const end of [...state.leases.values()]) end();
        if (state.qp !== undefined) this.verbs?.destroyQueuePair(state.qp);
        this.landing.connectionClosed();
        this.conns.delete(conn);
        this.log('connection_closed', { conn, remote, reason: why, ...(errno ? { errno } : {}) });
      },
    };
  }

  private dropOffer(offer: Offer): void {
    clearTimeout(offer.timer);
    offer.reservation?.abort();
    if (offer.receive) this.release(offer.receive);
  }

  private release(r: Region): void {
    r.inFlight.end();
    this.pool.give(r);
  }

  /** Answers with an ERROR frame and closes the connection (the frame is sent first). */
  private drop(state: ConnState, kind: number, message: string): void {
    if (state.phase === 'closed') return;
    this.log('connection_dropped', { conn: state.id, remote: state.remote, reason: message });
    this.net.send(state.id, frame(MsgType.ERROR, 0, encodeError(kind, message)));
    this.net.closeConnection(state.id, message);
    state.phase = 'closed';
  }

  private onFrame(state: ConnState, ev: NetEvent): void {
    let job: Promise<unknown> | undefined;
    const done = this.hold(state, ev);
    try {
      if (state.phase === 'closed') return;
      const meta = ev.meta!;
      switch (state.phase) {
        case 'hello':
          return this.onHello(state, ev.type!, meta);
        case 'auth':
          return this.onAuth(state, ev.type!, meta);
        case 'verbs':
          return this.onVerbsConnect(state, ev);
        default:
          job = this.onRequest(state, ev);
          return;
      }
    } finally {
      if (job) void job.finally(done);
      else done();
      // Whatever happened to the frame (served, refused, its connection gone), the memory its
      // payload arrived in is free again once the request is done with it: a receive area, or
      // landing slots that no put took (putLanded() takes them by clearing ev.landed).
      const area = ev.area;
      if (area !== undefined) {
        if (job) void job.finally(() => this.provide(area));
        else this.provide(area);
      }
      if (ev.landed) this.landing.restore(ev.landed);
    }
  }

  /**
   * The transport counts what each frame holds (ev.held: its metadata and payload, and for a GET
   * the most answer bytes it can cause) against its connection, and stops reading it while that
   * and the answer bytes queued for it exceed maxQueuedBytes, until they drain to half
   * (TcpTransport, Conn::held). This hands them back: a GET's answer share as soon as its answer
   * is queued (state.answered, so the queued answer is not counted twice and a lent answer does
   * not hold it for the lease), the rest when the request is done (the function returned).
   */
  private hold(state: ConnState, ev: NetEvent): () => void {
    let left = ev.held ?? 0;
    if (left === 0) return () => {};
    state.queued += left;
    const give = (bytes: number): void => {
      const n = Math.min(bytes, left);
      left -= n;
      state.queued -= n;
      if (n > 0 && state.phase !== 'closed') this.net.release(state.id, n);
    };
    const rid = ev.requestId ?? 0;
    const answer = left - (ev.meta?.length ?? 0) - (ev.payloadBytes ?? 0);
    const answered = (): void => give(answer);
    if (answer > 0) state.answered.set(rid, answered);
    return () => {
      if (state.answered.get(rid) === answered) state.answered.delete(rid);
      give(left);
    };
  }

  /** A GET's answer is queued: its answer share of what the request holds goes back. */
  private answered(state: ConnState, rid: number): void {
    const f = state.answered.get(rid);
    state.answered.delete(rid);
    f?.();
  }

  private get queueLimit(): number {
    return this.options.maxQueuedBytes ?? 64 << 20;
  }

  private onHello(state: ConnState, type: number, meta: Buffer): void {
    if (type !== MsgType.HELLO || meta.length !== HELLO_BYTES) {
      return this.drop(state, ErrorKind.PROTOCOL, 'expected HELLO');
    }
    const version = meta.readUInt16LE(0);
    if (version !== PROTOCOL_VERSION) {
      return this.drop(
        state,
        ErrorKind.VERSION,
        `this server speaks protocol version ${PROTOCOL_VERSION}, not ${version}`,
      );
    }
    const blockBytes = Number(meta.readBigUInt64LE(8));
    const mine = this.options.warehouse.blockBytes;
    if (blockBytes !== 0 && blockBytes !== mine) {
      return this.drop(
        state,
        ErrorKind.BLOCK_SIZE,
        `this server stores blocks of ${mine} bytes, not ${blockBytes}`,
      );
    }
    state.clientNonce = Buffer.from(meta.subarray(16, 16 + NONCE_BYTES));
    state.serverNonce = nonce();
    const out = Buffer.alloc(CHALLENGE_BYTES);
    out.writeUInt16LE(PROTOCOL_VERSION, 0);
    out.writeUInt32LE(this.capabilities(), 4);
    out.writeBigUInt64LE(BigInt(mine), 8);
    out.writeUInt32LE(this.maxBatch, 16);
    out.writeUInt32LE(maxMetaFor(this.maxBatch), 20);
    out.writeBigUInt64LE(BigInt(this.maxBatch * mine), 24);
    state.serverNonce.copy(out, 32);
    state.phase = 'auth';
    this.net.send(state.id, frame(MsgType.CHALLENGE, 0, out));
  }

  private capabilities(): number {
    return (
      Capability.TCP |
      (this.transport.verbs ? Capability.VERBS : 0) |
      (this.landing.enabled ? Capability.LANDS : 0) |
      (this.options.warehouse.persists ? Capability.DURABLE : 0)
    );
  }

  private onAuth(state: ConnState, type: number, meta: Buffer): void {
    if (type !== MsgType.AUTH || meta.length !== AUTH_BYTES) {
      return this.drop(state, ErrorKind.PROTOCOL, 'expected AUTH');
    }
    const expected = clientProof(this.options.secret, state.serverNonce!, state.clientNonce!);
    if (!proofMatches(expected, meta.subarray(0, 32))) {
      // The log names the peer, never the secret or the proofs.
      this.log('auth_failed', { conn: state.id, remote: state.remote });
      return this.drop(state, ErrorKind.AUTH, 'authentication failed');
    }
    const wanted = meta.readUInt32LE(32);
    if (wanted !== TransportId.tcp && !(wanted === TransportId.verbs && this.transport.verbs)) {
      return this.drop(state, ErrorKind.TRANSPORT, `transport ${wanted} is not available here`);
    }
    // A verbs connection sets up its queue pairs (VERBS_CONNECT) before any request, within the
    // handshake's time limit.
    if (wanted !== TransportId.verbs) clearTimeout(state.timer);
    state.phase = wanted === TransportId.verbs ? 'verbs' : 'ready';
    const bs = this.options.warehouse.blockBytes;
    // Only now may the peer send frames larger than a handshake.
    this.net.setLimits(
      state.id,
      maxMetaFor(this.maxBatch),
      this.maxBatch * bs,
      Math.max(1, this.queueLimit),
      {
        type: MsgType.GET,
        unit: bs,
      },
    );
    // The server proves itself only to a client that proved itself first: nobody without the
    // secret gets an HMAC computed with it.
    const out = Buffer.alloc(READY_BYTES);
    serverProof(this.options.secret, state.clientNonce!, state.serverNonce!).copy(out, 0);
    out.writeUInt32LE(wanted, 32);
    this.net.send(state.id, frame(MsgType.READY, 0, out));
    this.log('connection_ready', {
      conn: state.id,
      remote: state.remote,
      transport: wanted === TransportId.verbs ? 'verbs' : 'tcp',
    });
  }

  /** The client's queue pair address: the server connects its own and answers with it. */
  private onVerbsConnect(state: ConnState, ev: NetEvent): void {
    const meta = ev.meta!;
    if (ev.type !== MsgType.VERBS_CONNECT || meta.length !== VERBS_ADDRESS_BYTES) {
      return this.drop(state, ErrorKind.PROTOCOL, 'expected VERBS_CONNECT');
    }
    if ((ev.payloadBytes ?? 0) !== 0) {
      return this.drop(state, ErrorKind.PROTOCOL, 'VERBS_CONNECT carries no payload');
    }
    let qp: { id: number; address: Buffer } | undefined;
    try {
      qp = this.verbs!.createQueuePair();
      this.verbs!.connectQueuePair(qp.id, meta);
    } catch (e) {
      if (qp) this.verbs!.destroyQueuePair(qp.id);
      return this.drop(state, ErrorKind.TRANSPORT, `verbs: ${(e as Error).message}`);
    }
    clearTimeout(state.timer);
    state.qp = qp.id;
    state.phase = 'ready';
    this.net.send(state.id, frame(MsgType.VERBS_READY, 0, qp.address));
    this.log('verbs_connected', { conn: state.id, remote: state.remote });
  }

  /**
   * Where a block of host memory can be read ('read': remote read only) or written ('write') by
   * the client's RDMA. The rkey covers the whole registered region, not the block: the NIC
   * checks only the region's bounds (docs/protocol.md, "Access").
   */
  private placement(target: NativeTarget, offset: number, access: 'read' | 'write'): Placement {
    const r = this.verbs!.register(target, access);
    return { address: r.address + offset, rkey: r.rkey };
  }

  private provide(area: number): void {
    if (this.areas.closed) return;
    this.net.provideArea(this.areas, area * this.areaBytes, this.areaBytes, area);
  }

  private onRequest(state: ConnState, ev: NetEvent): Promise<unknown> | undefined {
    const rid = ev.requestId!;
    const type = ev.type!;
    const flags = ev.flags ?? 0;
    if (type === MsgType.PUT_DATA) return this.onPutData(state, ev);
    if (type === MsgType.VERBS_CONNECT || type === MsgType.VERBS_READY) {
      const why = state.qp === undefined ? 'on a tcp connection' : 'twice';
      this.drop(state, ErrorKind.PROTOCOL, `VERBS_CONNECT ${why}`);
      return undefined;
    }
    if (type === MsgType.RELEASE) {
      if (state.qp === undefined) {
        this.drop(state, ErrorKind.PROTOCOL, 'RELEASE on a tcp connection');
        return undefined;
      }
      // A RELEASE for a request with no lease (never lent anything, or already timed out) is
      // ignored: the client cannot tell those apart from a lease that just ended.
      state.leases.get(rid)?.();
      return undefined;
    }
    if (type === MsgType.GET && (flags & RequestFlag.REMOTE_READ) !== 0 && state.qp === undefined) {
      this.drop(state, ErrorKind.PROTOCOL, 'REMOTE_READ on a tcp connection');
      return undefined;
    }
    const requests = [MsgType.PUT, MsgType.GET, MsgType.LOOKUP, MsgType.DELETE, MsgType.PUT_OFFER];
    if (!requests.includes(type as never)) {
      this.drop(state, ErrorKind.PROTOCOL, `unknown message type ${type}`);
      return undefined;
    }
    let keys: Key[];
    try {
      keys = decodeKeys(ev.meta!, this.maxBatch);
    } catch (e) {
      const kind = /exceeds the limit/.test((e as Error).message)
        ? ErrorKind.LIMIT
        : ErrorKind.PROTOCOL;
      this.drop(state, kind, (e as Error).message);
      return undefined;
    }
    const bs = this.options.warehouse.blockBytes;
    const payloadBytes = ev.payloadBytes ?? 0;
    const wantPayload = type === MsgType.PUT ? keys.length * bs : 0;
    if (payloadBytes !== wantPayload) {
      this.drop(
        state,
        ErrorKind.PROTOCOL,
        `a ${keys.length}-key request carries ${payloadBytes} payload bytes, not ${wantPayload}`,
      );
      return undefined;
    }
    // An offer over the limit is refused on its own: the offers already accepted go on.
    if (type === MsgType.PUT_OFFER && state.offers.size + state.offering.size >= MAX_OFFERS) {
      const message = `more than ${MAX_OFFERS} put offers waiting for data`;
      this.net.send(state.id, frame(MsgType.ERROR, rid, encodeError(ErrorKind.LIMIT, message)));
      return undefined;
    }
    const durable = this.durable(type, flags);
    if (durable && !this.options.warehouse.persists) {
      const message = 'durable puts need a file tier, and this server has none';
      this.net.send(state.id, frame(MsgType.ERROR, rid, encodeError(ErrorKind.INTERNAL, message)));
      return undefined;
    }
    if (this.closing) {
      this.net.send(
        state.id,
        frame(MsgType.ERROR, rid, encodeError(ErrorKind.SHUTTING_DOWN, 'shutting down')),
      );
      return undefined;
    }
    if (type === MsgType.PUT || type === MsgType.PUT_OFFER) this.landing.demand();
    if (type === MsgType.PUT && ev.landed) {
      return this.track(state, type, rid, this.putLanded(state, rid, keys, ev, durable));
    }
    const payload =
      ev.area !== undefined ? this.areas.view(ev.area * this.areaBytes, payloadBytes) : ev.payload;
    return this.track(state, type, rid, this.serve(state, type, rid, keys, payload, flags));
  }

  /** Whether a request is a put that must be durable before it is answered. */
  private durable(type: number, flags: number): boolean {
    if (type !== MsgType.PUT && type !== MsgType.PUT_OFFER) return false;
    return (this.options.durablePuts ?? false) || (flags & RequestFlag.DURABLE) !== 0;
  }

  /**
   * A durable put's answer: its blocks are stored however they arrived; this writes them down to
   * the file tier and syncs it (Warehouse.persist). Only keys whose synced file copy is there keep
   * OK or PRESENT; the others answer REJECTED, so nothing is acknowledged that a crash could lose.
   */
  private async persisted(keys: Key[], statuses: number[]): Promise<number[]> {
    const safe = await this.options.warehouse.persist(keys);
    return statuses.map((x, i) =>
      safe[i] || (x !== Status.OK && x !== Status.PRESENT) ? x : Status.REJECTED,
    );
  }

  /**
   * Keeps a request's work in `work` (so shutdown waits for it) and answers a failure with an
   * INTERNAL error frame on its connection, unless the connection is gone.
   */
  private track(state: ConnState, type: number, rid: number, work: Promise<void>): Promise<void> {
    const job = work.catch((e: unknown) => {
      this.log('request_failed', { conn: state.id, type, error: String(e) });
      if (state.phase !== 'closed') {
        this.net.send(
          state.id,
          frame(MsgType.ERROR, rid, encodeError(ErrorKind.INTERNAL, (e as Error).message)),
        );
      }
    });
    this.work.add(job);
    void job.finally(() => this.work.delete(job));
    return job;
  }

  private async serve(
    state: ConnState,
    type: number,
    rid: number,
    keys: Key[],
    payload: Uint8Array | undefined,
    flags: number,
  ): Promise<void> {
    const wh = this.options.warehouse;
    const bs = wh.blockBytes;
    switch (type) {
      case MsgType.PUT: {
        this.putCounts.copied += keys.length;
        const put = keys.length > 0 ? (await wh.put(keys, payload!)).status : [];
        let statuses: number[] = put.map((s) =>
          s === 'present' ? Status.PRESENT : s === 'stored' ? Status.OK : Status.REJECTED,
        );
        if (this.durable(type, flags)) statuses = await this.persisted(keys, statuses);
        this.reply(state, MsgType.PUT_RESULT, rid, encodeResults(statuses));
        return;
      }
      case MsgType.GET: {
        if (keys.length === 0) {
          this.reply(state, MsgType.GET_RESULT, rid, encodeResults([]));
          return;
        }
        // Host-tier blocks go out straight from their slots (pinned meanwhile); the rest are
        // read into a send region first. A node fetching for the cluster asks for local blocks
        // only (LOCAL_ONLY): no second hop.
        const localOnly = (flags & RequestFlag.LOCAL_ONLY) !== 0;
        if ((flags & RequestFlag.REMOTE_READ) !== 0) {
          return this.lendForRead(state, rid, keys, localOnly);
        }
        await this.withBlocks(keys, localOnly, async (blocks) => {
          if (state.phase === 'closed') return;
          const targets: NativeTarget[] = [];
          const index = new Map<unknown, number>();
          const statuses: number[] = [];
          const checksums: number[] = [];
          const spans: number[] = [];
          for (const b of blocks) {
            if (!b) {
              statuses.push(Status.MISSING);
              checksums.push(-1);
              continue;
            }
            let at = index.get(b.target);
            if (at === undefined) {
              at = targets.push(b.target) - 1;
              index.set(b.target, at);
            }
            statuses.push(Status.OK);
            checksums.push(b.checksum);
            spans.push(at, b.offset, bs);
          }
          const token = this.nextToken++;
          const sent = new Promise<void>((resolve) => state.sending.set(token, resolve));
          this.net.send(
            state.id,
            frame(
              MsgType.GET_RESULT,
              rid,
              encodeResults(statuses, 0, checksums),
              (spans.length / 3) * bs,
            ),
            targets,
            new Float64Array(spans),
            token,
            true,
          );
          this.answered(state, rid);
          await sent;
        });
        return;
      }
      case MsgType.PUT_OFFER:
        return this.offer(state, rid, keys, this.durable(type, flags));
      case MsgType.LOOKUP: {
        const r = wh.lookup(keys);
        this.reply(
          state,
          MsgType.LOOKUP_RESULT,
          rid,
          encodeResults(
            r.tiers.map((t) => (t >= 0 ? Status.OK : Status.MISSING)),
            r.prefix,
          ),
        );
        return;
      }
      case MsgType.DELETE: {
        const statuses = (await wh.evict(keys)).status.map((s) =>
          s === 'absent' ? Status.MISSING : s === 'removed' ? Status.OK : Status.REJECTED,
        );
        this.reply(state, MsgType.DELETE_RESULT, rid, encodeResults(statuses));
        return;
      }
    }
  }

  /** A one-step put whose blocks landed straight in claimed host-tier slots (Landing). */
  private async putLanded(
    state: ConnState,
    rid: number,
    keys: Key[],
    ev: NetEvent,
    durable: boolean,
  ): Promise<void> {
    const tokens = ev.landed!;
    ev.landed = undefined; // the slots are this put's now, not onFrame()'s to give back
    this.putCounts.landed += keys.length;
    const stored = await this.landing.store(keys, tokens, ev.checksums!);
    // A key repeated in the batch is stored once; every copy of it answers as stored.
    const mine = new Set(keys.filter((_, i) => stored[i]));
    let statuses: number[] = keys.map((k) => (mine.has(k) ? Status.OK : Status.PRESENT));
    // Landed in host-tier slots: a durable put also waits for their synced file copies.
    if (durable) statuses = await this.persisted(keys, statuses);
    this.reply(state, MsgType.PUT_RESULT, rid, encodeResults(statuses));
  }

  /**
   * A GET over verbs: answers where each found block lies (registered host-tier slots, or a
   * registered send region for blocks from lower tiers) and keeps those pinned until the client
   * has read them with RDMA READ and sent RELEASE, or the lease times out.
   */
  private async lendForRead(
    state: ConnState,
    rid: number,
    keys: Key[],
    localOnly: boolean,
  ): Promise<void> {
    if (state.leases.has(rid)) {
      this.drop(state, ErrorKind.PROTOCOL, `request id ${rid} already holds a lease`);
      return;
    }
    if (state.leases.size >= MAX_LEASES) {
      this.drop(state, ErrorKind.LIMIT, `more than ${MAX_LEASES} leases for RDMA READ at once`);
      return;
    }
    // The id is claimed now, before anything is awaited: a second GET with it, arriving while
    // the blocks are looked up, finds it taken. RELEASE, the timeout and the connection's close
    // all call `end`; once it has been called, the blocks go as soon as the answer is out.
    let end!: () => void;
    const released = new Promise<void>((resolve) => (end = resolve));
    state.leases.set(rid, end);
    try {
      await this.lend(state, rid, keys, localOnly, released);
    } finally {
      if (state.leases.get(rid) === end) state.leases.delete(rid);
    }
  }

  /** lendForRead's work once the request id holds its place in `leases`. */
  private async lend(
    state: ConnState,
    rid: number,
    keys: Key[],
    localOnly: boolean,
    released: Promise<void>,
  ): Promise<void> {
    await this.withBlocks(keys, localOnly, async (blocks) => {
      if (state.phase === 'closed') return;
      const statuses: number[] = [];
      const checksums: number[] = [];
      const placements: Placement[] = [];
      for (const b of blocks) {
        statuses.push(b ? Status.OK : Status.MISSING);
        checksums.push(b ? b.checksum : -1);
        // Lent for reading: these keys allow RDMA READ only.
        if (b) placements.push(this.placement(b.target, b.offset, 'read'));
      }
      const meta = encodePlacedResults(statuses, placements, checksums);
      if (placements.length === 0) {
        this.reply(state, MsgType.GET_RESULT, rid, meta);
        return;
      }
      let expired!: () => void;
      const timedOut = new Promise<void>((resolve) => (expired = resolve));
      const timer = setTimeout(() => {
        this.log('lease_expired', { conn: state.id, requestId: rid });
        expired();
      }, this.options.leaseTimeoutMs ?? LEASE_MS);
      timer.unref();
      this.reply(state, MsgType.GET_RESULT, rid, meta);
      this.answered(state, rid);
      await Promise.race([released, timedOut]);
      clearTimeout(timer);
    });
  }

  /**
   * The blocks of a GET: host-tier copies are lent (pinned, no copy); the others are read into a
   * send region (from lower tiers, and from the cluster unless `localOnly`: a node fetching for
   * the cluster asks for local blocks only, so no second hop). `use` gets each key's block, or
   * undefined for a miss, with a checksum the client verifies end to end: the stored one, or one
   * computed here for blocks read up (verified on their way up). Everything stays pinned or held
   * until `use` settles.
   */
  private async withBlocks(
    keys: Key[],
    localOnly: boolean,
    use: (blocks: (SentBlock | undefined)[]) => Promise<void>,
  ): Promise<void> {
    const wh = this.options.warehouse;
    const bs = wh.blockBytes;
    await wh.lend(keys, async (lent) => {
      const rest = keys.flatMap((_, i) => (lent[i] ? [] : [i]));
      const region = rest.length > 0 ? this.pool.take(rest.length * bs) : undefined;
      region?.inFlight.begin();
      try {
        const got = region
          ? await wh.get(
              rest.map((i) => keys[i]!),
              region,
              localOnly ? { remote: false } : {},
            )
          : undefined;
        let j = 0;
        const blocks = keys.map((_, i): SentBlock | undefined => {
          const b = lent[i];
          if (b)
            return { target: nativeTargetOf(b.target), offset: b.offset, checksum: b.checksum };
          const at = j++;
          if (!got!.found[at]) return undefined;
          const bytes = region!.view(at * bs, bs);
          return { target: region!.native, offset: at * bs, checksum: native().crc32c(bytes) };
        });
        await use(blocks);
      } finally {
        if (region) this.release(region);
      }
    });
  }

  /**
   * A two-step put: reserves host-tier slots and tells the transport to read the blocks of the
   * coming PUT_DATA straight into them, so the bytes are copied once, by the kernel.
   */
  private async offer(state: ConnState, rid: number, keys: Key[], durable: boolean): Promise<void> {
    const wh = this.options.warehouse;
    const bs = wh.blockBytes;
    if (state.offers.has(rid) || state.offering.has(rid)) {
      this.drop(state, ErrorKind.PROTOCOL, `request id ${rid} already has an offer`);
      return;
    }
    // Counted from now (onRequest's limit), not once the reservation is made.
    state.offering.add(rid);
    let reservation: Reservation | undefined;
    try {
      reservation = await wh.reserve(keys);
    } finally {
      state.offering.delete(rid);
    }
    let statuses: number[];
    if (reservation) {
      statuses = reservation.slots.map((x) =>
        x === 'present' ? Status.PRESENT : x === 'rejected' ? Status.REJECTED : Status.OK,
      );
    } else {
      const seen = new Set<Key>();
      const tiers = wh.lookup(keys).tiers;
      statuses = keys.map((k, i) => {
        if (seen.has(k) || tiers[i]! >= 0) return Status.PRESENT;
        seen.add(k);
        return Status.OK;
      });
    }
    if (state.phase === 'closed') {
      reservation?.abort();
      return;
    }
    // Data that never comes would hold the slots forever: the connection is closed instead,
    // which also makes the transport forget the placement before the slots are given back.
    const timer = setTimeout(
      () => this.drop(state, ErrorKind.PROTOCOL, 'put data did not follow its offer in time'),
      this.options.offerTimeoutMs ?? 30_000,
    );
    timer.unref();
    const offer: Offer = {
      keys,
      statuses,
      reservation,
      timer,
      remote: state.qp !== undefined,
      durable,
    };
    state.offers.set(rid, offer);
    const meta = encodeResults(statuses);
    if (offer.remote) {
      // Verbs: the client writes the blocks with RDMA WRITE, into the reserved slots or, without
      // a reservation, into a registered receive region.
      let placements: Placement[];
      try {
        placements = this.offerPlacements(offer, bs);
      } catch (e) {
        state.offers.delete(rid);
        this.dropOffer(offer);
        throw e;
      }
      this.reply(state, MsgType.PUT_ACCEPT, rid, encodePlacedResults(statuses, placements));
      return;
    }
    if (!reservation) {
      this.reply(state, MsgType.PUT_ACCEPT, rid, meta);
      return;
    }
    const targets: NativeTarget[] = [];
    const index = new Map<unknown, number>();
    const spans: number[] = [];
    for (const x of reservation.slots) {
      if (typeof x === 'string') {
        spans.push(0, 0, 0);
        continue;
      }
      const t = nativeTargetOf(x.target);
      let at = index.get(t);
      if (at === undefined) {
        at = targets.push(t) - 1;
        index.set(t, at);
      }
      spans.push(at, x.offset, bs);
    }
    if (targets.length === 0) targets.push(Buffer.alloc(0)); // zero-length spans need a target
    this.net.send(state.id, frame(MsgType.PUT_ACCEPT, rid, meta), targets, undefined, 0, false, {
      type: MsgType.PUT_DATA,
      requestId: rid,
      spans: new Float64Array(spans),
    });
  }

  /** Where the client may write each accepted block of a verbs offer. */
  private offerPlacements(offer: Offer, bs: number): Placement[] {
    const placements: Placement[] = [];
    if (offer.reservation) {
      for (const x of offer.reservation.slots) {
        if (typeof x !== 'string') {
          placements.push(this.placement(nativeTargetOf(x.target), x.offset, 'write'));
        }
      }
      return placements;
    }
    const accepted = offer.statuses.filter((x) => x === Status.OK).length;
    if (accepted > 0) {
      offer.receive = this.pool.take(accepted * bs);
      offer.receive.inFlight.begin();
      for (let n = 0; n < accepted; n++) {
        placements.push(this.placement(offer.receive.native, n * bs, 'write'));
      }
    }
    return placements;
  }

  private onPutData(state: ConnState, ev: NetEvent): Promise<unknown> | undefined {
    const rid = ev.requestId!;
    const offer = state.offers.get(rid);
    if (!offer) {
      this.drop(state, ErrorKind.PROTOCOL, `put data for request ${rid} without an offer`);
      return undefined;
    }
    let statuses: number[];
    try {
      statuses = decodeResults(ev.meta!, offer.keys.length).statuses;
    } catch (e) {
      this.drop(state, ErrorKind.PROTOCOL, (e as Error).message);
      return undefined;
    }
    const bs = this.options.warehouse.blockBytes;
    const accepted = offer.statuses.filter((x) => x === Status.OK).length;
    const written = ((ev.flags ?? 0) & RequestFlag.REMOTE_WRITTEN) !== 0;
    if (
      statuses.some((x, i) => x !== offer.statuses[i]) ||
      written !== offer.remote ||
      (ev.payloadBytes ?? 0) !== (offer.remote ? 0 : accepted * bs) ||
      (!offer.remote && offer.reservation !== undefined && accepted > 0 && !ev.placed)
    ) {
      this.drop(state, ErrorKind.PROTOCOL, 'put data does not match its offer');
      return undefined;
    }
    state.offers.delete(rid);
    clearTimeout(offer.timer);
    // Written by RDMA: the server has no checksums of its own yet; commit() computes them.
    const payload = offer.remote
      ? offer.receive?.view(0, accepted * bs)
      : ev.area !== undefined
        ? this.areas.view(ev.area * this.areaBytes, accepted * bs)
        : ev.payload;
    const work = this.finishPut(
      state,
      rid,
      offer,
      payload,
      offer.remote ? undefined : ev.checksums,
    );
    const receive = offer.receive;
    return this.track(
      state,
      MsgType.PUT_DATA,
      rid,
      receive ? work.finally(() => this.release(receive)) : work,
    );
  }

  private async finishPut(
    state: ConnState,
    rid: number,
    offer: Offer,
    payload: Uint8Array | undefined,
    checksums: Uint32Array | undefined,
  ): Promise<void> {
    const wh = this.options.warehouse;
    const result = offer.statuses.map((x) => (x === Status.OK ? Status.REJECTED : x));
    const accepted = offer.statuses.filter((x) => x === Status.OK).length;
    if (offer.reservation) this.putCounts.placed += accepted;
    else this.putCounts.copied += accepted;
    if (offer.reservation) {
      const { stored } = await offer.reservation.commit(checksums);
      for (const i of stored) result[i] = Status.OK;
    } else {
      const sent = offer.keys.filter((_, i) => offer.statuses[i] === Status.OK);
      const put = sent.length > 0 ? (await wh.put(sent, payload!)).status : [];
      let next = 0;
      offer.statuses.forEach((x, i) => {
        if (x !== Status.OK) return;
        const s = put[next++];
        if (s === 'stored' || s === 'present') result[i] = Status.OK;
      });
    }
    const answer = offer.durable ? await this.persisted(offer.keys, result) : result;
    this.reply(state, MsgType.PUT_RESULT, rid, encodeResults(answer));
  }

  private reply(state: ConnState, type: number, rid: number, meta: Buffer): void {
    if (state.phase !== 'closed') this.net.send(state.id, frame(type, rid, meta));
  }

  /**
   * Stops accepting, answers new requests with SHUTTING_DOWN, lets the requests in flight finish
   * (up to graceMs), then closes every connection. The warehouse stays open: its owner closes it.
   */
  close(graceMs = 10_000): Promise<void> {
    this.closing ??= (async () => {
      this.net.closeListener(this.listener);
      const deadline = Date.now() + graceMs;
      while (this.work.size > 0 && Date.now() < deadline) {
        await Promise.race([
          Promise.allSettled([...this.work]),
          new Promise((r) => setTimeout(r, Math.max(1, deadline - Date.now()))),
        ]);
      }
      // Answers already queued go out before the sockets close.
      while ([...this.conns.values()].some((c) => c.sending.size > 0) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 10));
      }
      for (const c of this.conns.values()) {
        this.net.closeConnection(c.id, 'the server is shutting down');
      }
      await new Promise((r) => setTimeout(r, 20));
      await this.landing.close();
      this.net.unref();
      this.net.close();
      this.landing.afterTransportClosed();
      this.verbs?.close();
      await this.pool.close();
      this.areas.inFlight.end();
      await this.areas.close();
    })().catch((e: unknown) => {
      throw new KvtierError('KVTIER_IO', 'the peer server did not close cleanly', { cause: e });
    });
    return this.closing;
  }
}
