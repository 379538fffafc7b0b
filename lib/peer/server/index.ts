/**
 * PeerServer: serves one Warehouse to remote clients over the peer protocol (docs/protocol.md).
 * The native transport moves the frames; this decides what they mean: the handshake
 * (handshake.ts), then the requests (handlers.ts, gets.ts, offers.ts). A connection that breaks a
 * rule is answered with an ERROR frame and closed; the server and its other clients go on.
 */
import { KvtierError } from '../../core/errors.js';
import type { NetEvent, NetStats } from '../../core/native.js';
import type { ConnHandler } from '../net.js';
import { ErrorKind } from '../protocol.js';
import { chooseTransport, type TransportChoice } from '../transports.js';
import { newConn, type ConnState } from './conn.js';
import { ServerCore } from './core.js';
import { Handlers } from './handlers.js';
import { ServerHandshake } from './handshake.js';
import { checkServerOptions, type PeerServerOptions } from './options.js';

export type { LogFn, PeerServerOptions, ServerTenancy } from './options.js';

/** Resolves after `ms` (at once when not positive), unless cancelled first. */
function timeout(ms: number): { done: Promise<void>; cancel(): void } {
  let timer: NodeJS.Timeout | undefined;
  const done = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, Math.max(0, ms));
  });
  return { done, cancel: () => clearTimeout(timer) };
}

export class PeerServer {
  readonly host: string;
  readonly port: number;
  readonly transport: TransportChoice;
  readonly maxBatch: number;
  private readonly core: ServerCore;
  private readonly handshake: ServerHandshake;
  private readonly handlers: Handlers;
  private readonly conns = new Map<number, ConnState>();
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly options: PeerServerOptions,
    transport: TransportChoice,
  ) {
    this.transport = transport;
    this.core = new ServerCore(options, transport, (conn, remote) => this.accept(conn, remote));
    this.port = this.core.port;
    this.host = options.host;
    this.maxBatch = this.core.maxBatch;
    this.handshake = new ServerHandshake(this.core);
    this.handlers = new Handlers(this.core);
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
    return { ...this.core.putCounts };
  }

  /**
   * Backpressure: times a connection stopped being read, the most bytes one connection's requests
   * held (maxQueued), and the most answer bytes one had queued for its client to read.
   */
  get backpressure(): { pauses: number; maxQueued: number; maxAnswerQueued: number } {
    const s = this.core.net.stats();
    return { pauses: s.pauses, maxQueued: s.maxHeld, maxAnswerQueued: s.maxOutQueued };
  }

  /**
   * ERROR frames sent to clients, by the error code they carried (docs/protocol.md's names,
   * lower case: 'protocol', 'auth', 'limit'...). Codes never sent are absent.
   */
  errorsSent(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [name, code] of Object.entries(ErrorKind)) {
      const n = this.core.errorsSent.get(code);
      if (n !== undefined) out[name.toLowerCase()] = n;
    }
    return out;
  }

  /** The transport's counters (backpressure and connection limits). */
  netStats(): NetStats {
    return this.core.net.stats();
  }

  private accept(conn: number, remote: string): ConnHandler {
    const { core } = this;
    const state = newConn(conn, remote);
    this.conns.set(conn, state);
    core.open.begin();
    state.timer = setTimeout(
      () => core.drop(state, ErrorKind.AUTH, 'no authenticated handshake in time'),
      this.options.handshakeTimeoutMs ?? 5000,
    );
    state.timer.unref();
    core.log('connection_open', { conn, remote });
    if (this.closing) core.drop(state, ErrorKind.SHUTTING_DOWN, 'the server is shutting down');
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
        for (const offer of state.offers.values()) this.handlers.offers.drop(offer);
        state.offers.clear();
        // The client can no longer read what it was lent: the blocks are unpinned.
        for (const end of [...state.leases.values()]) end();
        if (state.qp !== undefined) core.verbs?.destroyQueuePair(state.qp);
        core.landing.connectionClosed();
        this.conns.delete(conn);
        core.open.end();
        core.log('connection_closed', { conn, remote, reason: why, ...(errno ? { errno } : {}) });
      },
    };
  }

  private onFrame(state: ConnState, ev: NetEvent): void {
    const { core } = this;
    let job: Promise<unknown> | undefined;
    const done = this.hold(state, ev);
    try {
      if (state.phase === 'closed') return;
      if (state.phase !== 'ready') return this.handshake.onFrame(state, ev);
      job = this.handlers.onRequest(state, ev);
    } finally {
      if (job) void job.finally(done);
      else done();
      // Whatever happened to the frame (served, refused, its connection gone), the memory its
      // payload arrived in is free again once the request is done with it: a receive area, or
      // landing slots that no put took (putLanded() takes them by clearing ev.landed).
      const area = ev.area;
      if (area !== undefined) {
        if (job) void job.finally(() => core.provide(area));
        else core.provide(area);
      }
      if (ev.landed) core.landing.restore(ev.landed);
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
      if (n > 0 && state.phase !== 'closed') this.core.net.release(state.id, n);
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

  /**
   * Stops accepting, answers new requests with SHUTTING_DOWN, lets the requests in flight finish
   * (up to graceMs), then closes every connection. The warehouse stays open: its owner closes it.
   */
  close(graceMs = 10_000): Promise<void> {
    this.closing ??= (async () => {
      const { core } = this;
      core.shuttingDown = true;
      core.net.closeListener(core.listener);
      const grace = timeout(graceMs);
      // The requests in flight finish, then the answers already queued go out before the sockets
      // close; neither waits past the grace period.
      await Promise.race([core.work.drained().then(() => core.sends.drained()), grace.done]);
      grace.cancel();
      for (const c of this.conns.values()) {
        core.net.closeConnection(c.id, 'the server is shutting down');
      }
      // Their close events (which give back offers' slots and lent blocks) come from the
      // transport's thread; the transport's own close below delivers any still missing then.
      const closes = timeout(20);
      await Promise.race([core.open.drained(), closes.done]);
      closes.cancel();
      await core.landing.close();
      core.net.unref();
      core.net.close();
      core.landing.afterTransportClosed();
      await core.closeMemory();
    })().catch((e: unknown) => {
      throw new KvtierError('KVTIER_IO', 'the peer server did not close cleanly', { cause: e });
    });
    return this.closing;
  }
}
