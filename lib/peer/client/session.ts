/**
 * A client's connection to its peer over time: the authenticated session of the moment, the table
 * of requests waiting for their answers, and reconnecting with backoff when the connection breaks.
 * When it breaks, the requests waiting on it reject with KVTIER_PEER (a get never reports a block
 * it did not receive whole); a request that outlives its timeout rejects with KVTIER_TIMEOUT and
 * the connection is replaced, since a stalled peer cannot be trusted to answer in order.
 */
import { KvtierError } from '../../core/errors.js';
import { InFlight } from '../../core/inflight.js';
import type { NativeTarget, NetEvent } from '../../core/native.js';
import type { Key } from '../../keys/keys.js';
import { Net } from '../net.js';
import {
  decodeError,
  decodePlacedResults,
  decodeResults,
  encodeKeys,
  encodeResults,
  errorCodeFor,
  frame,
  MsgType,
  type Placement,
  Status,
} from '../protocol.js';
import type { Transport } from '../transports.js';
import { hold, type Memory } from './memory.js';
import type { ConnectOptions } from './options.js';

/** An answer's entries; `placements` when it was a verbs answer (GET_RESULT, PUT_ACCEPT). */
export interface Answer {
  statuses: number[];
  word: number;
  checksums?: number[];
  placements?: Placement[];
}

/**
 * How one transport moves a request's blocks (the strategy's client half): TCP in frames
 * (data-path.ts), verbs by RDMA (verbs-path.ts).
 */
export interface DataPath {
  /** A GET whose found blocks end up in `memory`, each verified against its checksum. */
  get(s: Session, keys: Key[], memory: Memory, flags: number, call?: Buffer): Promise<Answer>;
  /**
   * The second step of a put, once the server accepted the offer: moves the accepted blocks and
   * sends PUT_DATA. Resolves once PUT_DATA is sent (so the offer's place can go to the next),
   * with its answer still to come.
   */
  putData(
    s: Session,
    rid: number,
    keys: Key[],
    memory: Memory,
    accept: Answer,
  ): Promise<{ answer: Promise<Answer> }>;
  /** Lets go of what the session holds besides its socket (a queue pair). */
  closeSession(s: Session): void;
}

export interface Session {
  conn: number;
  blockBytes: number;
  maxBatch: number;
  maxMeta: number;
  maxPayload: number;
  transport: Transport;
  path: DataPath;
  /** The server reads one-step PUT blocks straight into its store (Capability.LANDS). */
  lands: boolean;
  /** The server honours RequestFlag.DURABLE (Capability.DURABLE). */
  durable: boolean;
  /** The server serves tenants (Capability.TENANTS). */
  tenants?: boolean;
  /** The server reads call sections (Capability.CALLS). */
  calls?: boolean;
  /** The connected queue pair of a verbs session. */
  qp?: number;
}

/** What a session's socket hears once the handshake is done. */
export interface SessionEvents {
  onFrame(ev: NetEvent): void;
  onClose(conn: number, errno: number, why: string): void;
}

interface Pending {
  type: number;
  count: number;
  /** The answer carries a placement section (docs/protocol.md, RDMA verbs). */
  placed: boolean;
  resolve(r: Answer): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
  timedOut: boolean;
  release(): void;
}

const ANSWER_TYPES = {
  [MsgType.PUT]: MsgType.PUT_RESULT,
  [MsgType.GET]: MsgType.GET_RESULT,
  [MsgType.LOOKUP]: MsgType.LOOKUP_RESULT,
  [MsgType.DELETE]: MsgType.DELETE_RESULT,
  [MsgType.PUT_OFFER]: MsgType.PUT_ACCEPT,
  [MsgType.PUT_DATA]: MsgType.PUT_RESULT,
} as Record<number, number>;

export class Sessions {
  readonly net = new Net();
  session: Session | undefined;
  closed = false;
  /** Blocks received whose bytes failed their checksum (reported missing). */
  corruptBlocks = 0;
  private readonly pending = new Map<number, Pending>();
  /** The requests in `pending`: close() waits for them to settle. */
  private readonly work = new InFlight();
  /** Woken whenever a session comes or goes, or the client closes (waitConnected, close). */
  private readonly changed = new Set<() => void>();
  private nextRequest = 1;
  private attempt = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private lastError: KvtierError | undefined;
  readonly timeoutMs: number;

  constructor(
    readonly url: string,
    private readonly options: ConnectOptions,
    /** Connects and runs the handshake; the session's socket then reports to `events`. */
    private readonly dial: (events: SessionEvents) => Promise<Session>,
  ) {
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  async open(): Promise<void> {
    this.session = await this.dial({
      onFrame: (ev) => this.onFrame(ev),
      onClose: (conn, errno, why) => this.onClose(conn, errno, why),
    });
    this.attempt = 0;
    this.wake();
  }

  private wake(): void {
    const all = [...this.changed];
    this.changed.clear();
    for (const f of all) f();
  }

  /** Resolves at the next change of session, or after `ms`. */
  private change(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.changed.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.changed.add(done);
    });
  }

  ready(): Session {
    if (this.closed) throw new KvtierError('KVTIER_CLOSED', 'the peer client is closed');
    if (!this.session) {
      throw new KvtierError(
        'KVTIER_PEER',
        `not connected to ${this.url} (reconnecting)${this.lastError ? `: ${this.lastError.message}` : ''}`,
      );
    }
    return this.session;
  }

  nextId(): number {
    const rid = this.nextRequest;
    this.nextRequest = (this.nextRequest % 0xfffffffe) + 1; // never 0: 0 is the connection's
    return rid;
  }

  /** One request frame; chunks of a larger batch each go through here. */
  request(
    s: Session,
    type: number,
    keys: Key[],
    memory?: Memory,
    flags = 0,
    step?: { rid?: number; accepted?: number[]; placed?: boolean; call?: Buffer },
  ): Promise<Answer> {
    const rid = step?.rid ?? this.nextId();
    const accepted = step?.accepted;
    // PUT_DATA repeats the server's answer to the offer, and carries only the blocks it wants;
    // a request with a call section (RequestFlag.CALL) carries it after its keys.
    const meta = accepted
      ? encodeResults(accepted)
      : step?.call
        ? Buffer.concat([encodeKeys(keys), step.call])
        : encodeKeys(keys);
    const sends = (i: number): boolean => !accepted || accepted[i] === Status.OK;
    const bs = s.blockBytes;
    let targets: NativeTarget[] = [];
    let spans: Float64Array | undefined;
    let expect: { type: number; requestId: number; spans: Float64Array } | undefined;
    let release = (): void => {};
    if (memory) {
      const held = hold(memory, keys.length);
      targets = held.targets;
      release = held.release;
      const triples: number[] = [];
      for (let i = 0; i < keys.length; i++) {
        if (sends(i)) triples.push(held.at[i]!, memory.slots[i]! * bs, bs);
      }
      if (type === MsgType.GET) {
        expect = { type: MsgType.GET_RESULT, requestId: rid, spans: new Float64Array(triples) };
      } else {
        spans = new Float64Array(triples);
      }
    }
    const payload = spans ? (spans.length / 3) * bs : 0;
    return new Promise((resolve, reject) => {
      const p: Pending = {
        type,
        count: keys.length,
        placed: step?.placed ?? false,
        resolve,
        reject,
        timedOut: false,
        release,
        timer: setTimeout(() => {
          // The answer may still be landing in the caller's memory: close, and reject once the
          // transport confirms it let go (onClose).
          p.timedOut = true;
          this.net.closeConnection(s.conn, `no answer within ${this.timeoutMs} ms`);
        }, this.timeoutMs),
      };
      this.pending.set(rid, p);
      this.work.begin();
      this.net.ref();
      try {
        this.net.send(
          s.conn,
          frame(type, rid, meta, payload, flags),
          targets,
          spans,
          0,
          false,
          expect,
        );
      } catch (e) {
        this.pending.delete(rid);
        clearTimeout(p.timer);
        this.done(p);
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
  }

  private done(p: Pending): void {
    p.release();
    this.net.unref();
    this.work.end();
  }

  private onFrame(ev: NetEvent): void {
    const p = this.pending.get(ev.requestId!);
    if (!p) return; // the answer to a request that already timed out
    this.pending.delete(ev.requestId!);
    clearTimeout(p.timer);
    this.done(p);
    if (ev.type === MsgType.ERROR) {
      const { kind, message } = decodeError(ev.meta!);
      return p.reject(new KvtierError(errorCodeFor(kind), `${this.url}: ${message}`));
    }
    if (ev.type !== ANSWER_TYPES[p.type]) {
      p.reject(new KvtierError('KVTIER_PROTOCOL', `${this.url}: answer of the wrong type`));
      this.net.closeConnection(this.session?.conn ?? 0, 'answer of the wrong type');
      return;
    }
    try {
      const r: Answer = p.placed
        ? decodePlacedResults(ev.meta!, p.count)
        : decodeResults(ev.meta!, p.count);
      if (p.type === MsgType.GET && ev.checksums) this.verify(r as Required<Answer>, ev.checksums);
      p.resolve(r);
    } catch (e) {
      p.reject(e as Error);
      this.net.closeConnection(this.session?.conn ?? 0, (e as Error).message);
    }
  }

  /**
   * End to end: a block whose bytes do not match the checksum the server stored it with is not
   * reported found (and is counted), whatever happened to it on the way.
   */
  private verify(r: { statuses: number[]; checksums: number[] }, received: Uint32Array): void {
    let j = 0;
    r.statuses.forEach((status, i) => {
      if (status !== Status.OK) return;
      const got = received[j++];
      const want = r.checksums[i]!;
      if (want >= 0 && got !== want) {
        r.statuses[i] = Status.FAILED;
        this.corruptBlocks++;
      }
    });
  }

  private onClose(conn: number, errno: number, why: string): void {
    if (this.session?.conn === conn) {
      // Reads and writes still posted on its queue pair flush; their requests reject below or
      // when the completions come.
      this.session.path.closeSession(this.session);
      this.session = undefined;
      this.wake();
    }
    // Native no longer touches any buffer of these requests: they can reject now.
    const error = new KvtierError('KVTIER_PEER', `lost the connection to ${this.url}: ${why}`, {
      ...(errno ? { errno } : {}),
    });
    this.lastError = error;
    for (const [id, p] of [...this.pending]) {
      this.pending.delete(id);
      clearTimeout(p.timer);
      this.done(p);
      p.reject(
        p.timedOut
          ? new KvtierError(
              'KVTIER_TIMEOUT',
              `${this.url} did not answer within ${this.timeoutMs} ms`,
            )
          : error,
      );
    }
    if (!this.closed && this.options.reconnect !== false) this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.reconnectTimer || this.closed) return;
    const initial = (this.options.reconnect || {}).initialMs ?? 100;
    const max = (this.options.reconnect || {}).maxMs ?? 5000;
    const base = Math.min(max, initial * 2 ** this.attempt);
    const delay = base / 2 + Math.random() * (base / 2); // jitter: clients do not stampede back
    this.attempt++;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.closed) return;
      this.open().catch((e: unknown) => {
        this.lastError = e as KvtierError;
        this.scheduleReconnect();
      });
    }, delay);
    this.reconnectTimer.unref();
  }

  /** Waits until connected again (or `ms` pass); resolves with whether it is connected. */
  async waitConnected(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.session && !this.closed && Date.now() < deadline) {
      await this.change(deadline - Date.now());
    }
    return this.session !== undefined;
  }

  /**
   * Closes the connection; requests in flight reject through onClose, which the transport
   * delivers before it stops. The close event itself is waited for too (up to a second): one
   * still queued when the process exits would be delivered to an environment that can no longer
   * run JavaScript.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    this.wake();
    if (this.session) {
      this.net.closeConnection(this.session.conn, 'closed by the client');
      const deadline = Date.now() + 1000;
      while (this.session && Date.now() < deadline) await this.change(deadline - Date.now());
    }
    await this.work.drained();
    this.net.close();
  }
}
