/**
 * A client of a kvtier peer (`kvtier serve`): batched put, get, lookup and delete over the peer
 * protocol. Many requests may be in flight on one connection. When the connection breaks, the
 * requests waiting on it reject with KVTIER_PEER (a get never reports a block it did not receive
 * whole) and the client reconnects with exponential backoff; a request that outlives its timeout
 * rejects with KVTIER_TIMEOUT and the connection is replaced, since a stalled peer cannot be
 * trusted to answer in order.
 */
import { lookup as dnsLookup } from 'node:dns/promises';

import { checkTarget, nativeTargetOf, regionOf, type Target } from '../core/engine.js';
import { DeviceRegion } from '../core/gpu/device-region.js';
import { KvtierError } from '../core/errors.js';
import {
  badArgument,
  finite,
  guard,
  integer,
  options as readOptions,
  string,
} from '../core/validate.js';
import { native, type NativeTarget, type NativeVerbs, type NetEvent } from '../core/native.js';
import { Region } from '../core/region.js';
import { toKeys, type Key, type KeyChain, type KeyLike } from '../keys/keys.js';
import {
  checkSecret,
  clientProof,
  nonce,
  proofMatches,
  readTokenFile,
  serverProof,
} from './auth.js';
import type { Secret } from './auth.js';
import { Net } from './net.js';
import {
  AUTH_BYTES,
  Capability,
  CHALLENGE_BYTES,
  decodeError,
  decodePlacedResults,
  decodeResults,
  PLACEMENT_BYTES,
  type Placement,
  encodeKeys,
  encodeResults,
  PLACED_PUT_MIN_BYTES,
  errorCodeFor,
  frame,
  HELLO_BYTES,
  MAX_OFFERS,
  MsgType,
  NONCE_BYTES,
  parseAddress,
  PROTOCOL_VERSION,
  READY_BYTES,
  RequestFlag,
  RESULT_ENTRY_BYTES,
  BATCH_FIXED_BYTES,
  Status,
  TransportId,
  VERBS_ADDRESS_BYTES,
} from './protocol.js';
import { chooseTransport, type TransportOption } from './transports.js';

export interface ConnectOptions {
  /** The shared secret, or */
  token?: string | Buffer;
  /** a file holding it. */
  tokenFile?: string;
  /** The block size this client expects; the server refuses a mismatch. Default: the server's. */
  blockBytes?: number;
  /** Per-operation timeout (default 30 s). */
  timeoutMs?: number;
  /** Timeout of connecting and authenticating (default 10 s). */
  connectTimeoutMs?: number;
  /** Backoff between reconnection attempts; false disables reconnecting. */
  reconnect?: { initialMs?: number; maxMs?: number } | false;
  transport?: TransportOption;
  /** Make every put durable unless its own options say otherwise (PeerPutOptions.durable). */
  durable?: boolean;
}

export interface PeerPutOptions {
  /**
   * Resolve only once every block reported stored or present is in the server's file tier with
   * its header written and synced, so that a crash of the server loses none of them
   * (RequestFlag.DURABLE). Rejects with KVTIER_NOT_AVAILABLE when the server cannot (no file
   * tier, or an older server). Default: the connect() option `durable`, else false.
   */
  durable?: boolean;
}

export interface PeerPutResult {
  /** Per key: 'stored', 'present' (already there) or 'rejected' (no room or failed). */
  status: ('stored' | 'present' | 'rejected')[];
  stored: number;
  present: number;
  rejected: number;
}

export interface PeerGetResult {
  found: boolean[];
  count: number;
  prefix: number;
}

export interface PeerLookupResult {
  present: boolean[];
  prefix: number;
}

/** An answer's entries; `placements` when it was a verbs answer (GET_RESULT, PUT_ACCEPT). */
interface Answer {
  statuses: number[];
  word: number;
  checksums?: number[];
  placements?: Placement[];
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

/**
 * Puts and gets of at most this many bytes that are asked for in the same turn of the event loop
 * leave together, up to this many bytes per request (PeerClient.coalesce). Large enough that the
 * per-request costs (a frame, an event and a JavaScript turn on each side) stop mattering, small
 * enough that callers hardly wait on each other: at 1 MiB blocks, four per request.
 */
const COALESCE_BYTES = 4 << 20;

/** Where the blocks of a request live: key i's block is block `slots[i]` of `targets[i]`. */
interface Memory {
  targets: readonly Target[];
  slots: readonly number[];
}

/** A put or get waiting to leave with the others asked for in the same turn (coalesce()). */
interface Waiting {
  session: Session;
  keys: Key[];
  target: Target;
  slots: readonly number[];
  resolve(r: { statuses: number[]; word: number }): void;
  reject(e: Error): void;
}

interface Session {
  conn: number;
  blockBytes: number;
  maxBatch: number;
  maxMeta: number;
  maxPayload: number;
  transport: 'tcp' | 'verbs';
  /** The server reads one-step PUT blocks straight into its store (Capability.LANDS). */
  lands: boolean;
  /** The server honours RequestFlag.DURABLE (Capability.DURABLE). */
  durable: boolean;
  /** The connected queue pair of a verbs session. */
  qp?: number;
}

/** Memory of a request, held in flight: `at[i]` indexes key i's target in `targets`. */
interface Held {
  targets: NativeTarget[];
  at: number[];
  release: () => void;
}

const REQUEST_TYPES = {
  [MsgType.PUT]: MsgType.PUT_RESULT,
  [MsgType.GET]: MsgType.GET_RESULT,
  [MsgType.LOOKUP]: MsgType.LOOKUP_RESULT,
  [MsgType.DELETE]: MsgType.DELETE_RESULT,
  [MsgType.PUT_OFFER]: MsgType.PUT_ACCEPT,
  [MsgType.PUT_DATA]: MsgType.PUT_RESULT,
} as Record<number, number>;

/** Connects and authenticates; rejects with KVTIER_AUTH, KVTIER_PROTOCOL or KVTIER_PEER. */
export async function connect(url: string, given: ConnectOptions = {}): Promise<PeerClient> {
  const { host, port } = parseAddress(string(url, 'url'));
  const options = checkConnectOptions(given);
  let secret: Secret;
  if (options.token !== undefined) secret = checkSecret(options.token, 'the token');
  else if (options.tokenFile !== undefined) secret = await readTokenFile(options.tokenFile);
  else throw new KvtierError('KVTIER_BAD_ARGUMENT', 'connect() needs a token or a tokenFile');
  const choice = chooseTransport(options.transport ?? 'auto');
  const address = (await dnsLookup(host).catch((e: unknown) => {
    throw new KvtierError('KVTIER_PEER', `cannot resolve ${host}`, { cause: e });
  })) as { address: string };
  const client = new PeerClient(url, address.address, port, secret, options, choice.kind);
  await client.open();
  return client;
}

function checkConnectOptions(given: unknown): ConnectOptions {
  const o = readOptions<ConnectOptions>(given, 'options', [
    'token',
    'tokenFile',
    'blockBytes',
    'timeoutMs',
    'connectTimeoutMs',
    'reconnect',
    'transport',
  ]);
  const token = o.token;
  if (
    token !== undefined &&
    typeof token !== 'string' &&
    !guard('token', () => Buffer.isBuffer(token))
  ) {
    throw badArgument('options.token', 'a string or a Buffer', o.token);
  }
  if (o.tokenFile !== undefined) string(o.tokenFile, 'options.tokenFile');
  if (o.blockBytes !== undefined) integer(o.blockBytes, 'options.blockBytes', { min: 1 });
  if (o.timeoutMs !== undefined) finite(o.timeoutMs, 'options.timeoutMs', { min: 1 });
  if (o.connectTimeoutMs !== undefined) {
    finite(o.connectTimeoutMs, 'options.connectTimeoutMs', { min: 1 });
  }
  if (o.reconnect !== undefined && o.reconnect !== false) {
    const r = readOptions<{ initialMs?: number; maxMs?: number }>(
      o.reconnect,
      'options.reconnect',
      ['initialMs', 'maxMs'],
    );
    if (r.initialMs !== undefined) finite(r.initialMs, 'options.reconnect.initialMs', { min: 1 });
    if (r.maxMs !== undefined) finite(r.maxMs, 'options.reconnect.maxMs', { min: 1 });
    o.reconnect = r;
  }
  return o;
}

export class PeerClient {
  private readonly net: Net;
  private session: Session | undefined;
  private readonly pending = new Map<number, Pending>();
  private readonly queued = new Map<string, Waiting[]>();
  private nextRequest = 1;
  private closed = false;
  private corruptBlocks = 0;
  private attempt = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private lastError: KvtierError | undefined;
  /** Resolves when a reconnection attempt ends (for tests and waiting callers). */
  private reconnecting: Promise<void> | undefined;
  /** The RDMA endpoint of verbs sessions: one per client, a queue pair per connection. */
  private link: NativeVerbs | undefined;
  /** Offers sent and not yet followed by their data, and callers waiting to send one. */
  private offers = 0;
  private readonly offerWaiters: (() => void)[] = [];
  readonly timeoutMs: number;
  /** Why this transport was chosen. */
  transportReason = '';

  /** @internal */
  constructor(
    readonly url: string,
    private readonly address: string,
    private readonly port: number,
    private readonly secret: Secret,
    private readonly options: ConnectOptions,
    private readonly wantTransport: 'tcp' | 'verbs',
  ) {
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.net = new Net();
  }

  get blockBytes(): number {
    return this.session?.blockBytes ?? this.options.blockBytes ?? 0;
  }

  get maxBatch(): number {
    return this.session?.maxBatch ?? 0;
  }

  get connected(): boolean {
    return this.session !== undefined;
  }

  get transport(): 'tcp' | 'verbs' {
    return this.session?.transport ?? this.wantTransport;
  }

  /** @internal Connects and runs the handshake. */
  async open(): Promise<void> {
    this.session = await this.handshake();
    this.attempt = 0;
  }

  private handshake(): Promise<Session> {
    return new Promise<Session>((resolve, reject) => {
      const clientNonce = nonce();
      let phase: 'connecting' | 'challenge' | 'ready' | 'verbs' | 'done' = 'connecting';
      let session: Session | undefined;
      let serverNonce: Buffer | undefined;
      let conn = 0;
      const fail = (e: KvtierError): void => {
        if (phase === 'done') return;
        phase = 'done';
        clearTimeout(timer);
        this.net.unref();
        this.net.closeConnection(conn, e.message);
        if (session?.qp !== undefined) this.link?.destroyQueuePair(session.qp);
        reject(e);
      };
      const timer = setTimeout(
        () =>
          fail(
            new KvtierError(
              'KVTIER_TIMEOUT',
              `no authenticated connection to ${this.url} within ${this.options.connectTimeoutMs ?? 10_000} ms`,
            ),
          ),
        this.options.connectTimeoutMs ?? 10_000,
      );
      this.net.ref();
      try {
        conn = this.net.connect(this.address, this.port, {
          onConnected: () => {
            const hello = Buffer.alloc(HELLO_BYTES);
            hello.writeUInt16LE(PROTOCOL_VERSION, 0);
            hello.writeUInt32LE(
              Capability.TCP | (this.wantTransport === 'verbs' ? Capability.VERBS : 0),
              4,
            );
            hello.writeBigUInt64LE(BigInt(this.options.blockBytes ?? 0), 8);
            clientNonce.copy(hello, 16);
            phase = 'challenge';
            this.net.send(conn, frame(MsgType.HELLO, 0, hello));
          },
          onFrame: (ev) => {
            if (phase === 'done') return this.onFrame(ev);
            const meta = ev.meta!;
            if (ev.type === MsgType.ERROR) {
              const { kind, message } = decodeError(meta);
              return fail(new KvtierError(errorCodeFor(kind), `${this.url}: ${message}`));
            }
            if (phase === 'challenge') {
              if (ev.type !== MsgType.CHALLENGE || meta.length !== CHALLENGE_BYTES) {
                return fail(new KvtierError('KVTIER_PROTOCOL', `${this.url}: expected CHALLENGE`));
              }
              const version = meta.readUInt16LE(0);
              if (version !== PROTOCOL_VERSION) {
                return fail(
                  new KvtierError(
                    'KVTIER_PROTOCOL',
                    `${this.url} speaks protocol version ${version}, not ${PROTOCOL_VERSION}`,
                  ),
                );
              }
              serverNonce = Buffer.from(meta.subarray(32, 32 + NONCE_BYTES));
              const caps = meta.readUInt32LE(4);
              const useVerbs = this.wantTransport === 'verbs' && (caps & Capability.VERBS) !== 0;
              if (this.options.transport === 'verbs' && !useVerbs) {
                return fail(
                  new KvtierError('KVTIER_NOT_AVAILABLE', `${this.url} does not offer verbs`),
                );
              }
              session = {
                conn,
                blockBytes: Number(meta.readBigUInt64LE(8)),
                maxBatch: meta.readUInt32LE(16),
                maxMeta: meta.readUInt32LE(20),
                maxPayload: Number(meta.readBigUInt64LE(24)),
                transport: useVerbs ? 'verbs' : 'tcp',
                lands: (caps & Capability.LANDS) !== 0,
                durable: (caps & Capability.DURABLE) !== 0,
              };
              if (session.blockBytes < 1 || session.maxBatch < 1) {
                return fail(new KvtierError('KVTIER_PROTOCOL', `${this.url}: bad limits`));
              }
              this.transportReason = useVerbs
                ? 'verbs: both ends have an RDMA device'
                : this.wantTransport === 'verbs'
                  ? 'tcp: the server offers no verbs'
                  : (chooseTransport(this.options.transport ?? 'auto').reason ?? 'tcp');
              const auth = Buffer.alloc(AUTH_BYTES);
              clientProof(this.secret, serverNonce, clientNonce).copy(auth, 0);
              auth.writeUInt32LE(useVerbs ? TransportId.verbs : TransportId.tcp, 32);
              phase = 'ready';
              // Answers may be as large as the largest batch the server allows (with a placement
              // per entry over verbs).
              const resultMeta =
                BATCH_FIXED_BYTES + session.maxBatch * (RESULT_ENTRY_BYTES + PLACEMENT_BYTES);
              this.net.setLimits(conn, Math.max(resultMeta, 4096), session.maxPayload);
              this.net.send(conn, frame(MsgType.AUTH, 0, auth));
              return;
            }
            if (phase === 'verbs') {
              if (ev.type !== MsgType.VERBS_READY || meta.length !== VERBS_ADDRESS_BYTES) {
                return fail(
                  new KvtierError('KVTIER_PROTOCOL', `${this.url}: expected VERBS_READY`),
                );
              }
              try {
                this.link!.connectQueuePair(session!.qp!, meta);
              } catch (e) {
                return fail(
                  new KvtierError('KVTIER_PEER', `${this.url}: ${(e as Error).message}`, {
                    cause: e,
                  }),
                );
              }
              phase = 'done';
              clearTimeout(timer);
              this.net.unref();
              resolve(session!);
              return;
            }
            if (ev.type !== MsgType.READY || meta.length !== READY_BYTES || !session) {
              return fail(new KvtierError('KVTIER_PROTOCOL', `${this.url}: expected READY`));
            }
            const proof = meta.subarray(0, 32);
            if (!proofMatches(serverProof(this.secret, clientNonce, serverNonce!), proof)) {
              return fail(
                new KvtierError('KVTIER_AUTH', `${this.url} could not prove it knows the secret`),
              );
            }
            if (session.transport === 'verbs') {
              // The control channel is up; now the queue pairs (docs/protocol.md, verbs).
              try {
                // A client only initiates: its queue pairs and memory grant the server no access.
                this.link ??= new (native().NativeVerbs)({ role: 'client' });
                const qp = this.link.createQueuePair();
                session.qp = qp.id;
                phase = 'verbs';
                this.net.send(conn, frame(MsgType.VERBS_CONNECT, 0, qp.address));
              } catch (e) {
                return fail(
                  e instanceof KvtierError
                    ? e
                    : new KvtierError('KVTIER_NOT_AVAILABLE', String(e), { cause: e }),
                );
              }
              return;
            }
            phase = 'done';
            clearTimeout(timer);
            this.net.unref();
            resolve(session);
          },
          onClose: (errno, why) => {
            if (phase !== 'done') {
              fail(
                new KvtierError('KVTIER_PEER', `cannot reach ${this.url}: ${why}`, {
                  ...(errno ? { errno } : {}),
                }),
              );
              return;
            }
            this.onClose(conn, errno, why);
          },
        });
      } catch (e) {
        fail(
          e instanceof KvtierError
            ? e
            : new KvtierError('KVTIER_PEER', `cannot reach ${this.url}`, { cause: e }),
        );
      }
    });
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
    if (ev.type !== REQUEST_TYPES[p.type]) {
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

  /** Blocks received whose bytes failed their checksum (reported missing). */
  get corrupt(): number {
    return this.corruptBlocks;
  }

  private done(p: Pending): void {
    p.release();
    this.net.unref();
  }

  private onClose(conn: number, errno: number, why: string): void {
    if (this.session?.conn === conn) {
      // Reads and writes still posted on its queue pair flush; their requests reject below or
      // when the completions come.
      if (this.session.qp !== undefined) this.link?.destroyQueuePair(this.session.qp);
      this.session = undefined;
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
    let wake!: () => void;
    this.reconnecting = new Promise<void>((r) => (wake = r));
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.closed) return wake();
      this.open().then(
        () => wake(),
        (e: unknown) => {
          this.lastError = e as KvtierError;
          wake();
          this.scheduleReconnect();
        },
      );
    }, delay);
    this.reconnectTimer.unref();
  }

  /** Waits until connected again (or `ms` pass); resolves with whether it is connected. */
  async waitConnected(ms = this.timeoutMs): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.session && !this.closed && Date.now() < deadline) {
      const wait = this.reconnecting ?? Promise.resolve();
      await Promise.race([wait, new Promise((r) => setTimeout(r, Math.min(50, ms)))]);
    }
    return this.session !== undefined;
  }

  private ready(): Session {
    if (this.closed) throw new KvtierError('KVTIER_CLOSED', 'the peer client is closed');
    if (!this.session) {
      throw new KvtierError(
        'KVTIER_PEER',
        `not connected to ${this.url} (reconnecting)${this.lastError ? `: ${this.lastError.message}` : ''}`,
      );
    }
    return this.session;
  }

  /**
   * Holds the memory of a request's keys in flight (each Region's inFlight) until release(), and
   * names each distinct target once: requests coalesced from several callers have many.
   */
  private hold(memory: Memory, count: number): Held {
    const regions: Region[] = [];
    const index = new Map<Target, number>();
    const targets: NativeTarget[] = [];
    const release = (): void => {
      for (const r of regions) r.inFlight.end();
    };
    const at: number[] = [];
    try {
      for (let i = 0; i < count; i++) {
        const target = memory.targets[i]!;
        let n = index.get(target);
        if (n === undefined) {
          if (target instanceof DeviceRegion) {
            throw new KvtierError(
              'KVTIER_BAD_ARGUMENT',
              'peer transfers move host memory; gather GPU blocks into a pinned Region first',
            );
          }
          const region = regionOf(target);
          if (region) {
            region.assertOpen();
            region.inFlight.begin();
            regions.push(region);
          }
          n = targets.push(nativeTargetOf(target)) - 1;
          index.set(target, n);
        }
        at.push(n);
      }
    } catch (e) {
      release();
      throw e;
    }
    return { targets, at, release };
  }

  /** One request frame; chunks of a larger batch each go through here. */
  private request(
    s: Session,
    type: number,
    keys: Key[],
    memory?: Memory,
    flags = 0,
    step?: { rid: number; accepted?: number[]; placed?: boolean },
  ): Promise<Answer> {
    const rid = step?.rid ?? this.nextId();
    const accepted = step?.accepted;
    // PUT_DATA repeats the server's answer to the offer, and carries only the blocks it wants.
    const meta = accepted ? encodeResults(accepted) : encodeKeys(keys);
    const sends = (i: number): boolean => !accepted || accepted[i] === Status.OK;
    const bs = s.blockBytes;
    let targets: NativeTarget[] = [];
    let spans: Float64Array | undefined;
    let expect: { type: number; requestId: number; spans: Float64Array } | undefined;
    let release = (): void => {};
    if (memory) {
      const held = this.hold(memory, keys.length);
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

  /**
   * RDMA between the caller's memory and the places a verbs answer named, one work request per
   * OK entry. A failure replaces the connection (its queue pair is in the error state) and
   * rejects with KVTIER_PEER; it settles only once no byte can still move.
   */
  private async rdma(
    s: Session,
    write: boolean,
    keys: Key[],
    memory: Memory,
    answer: Answer,
  ): Promise<void> {
    const held = this.hold(memory, keys.length);
    try {
      const bs = s.blockBytes;
      const ops: number[] = [];
      let j = 0;
      answer.statuses.forEach((st, i) => {
        if (st !== Status.OK) return;
        const p = answer.placements![j++]!;
        ops.push(write ? 1 : 0, held.at[i]!, memory.slots[i]! * bs, bs, p.address, p.rkey);
      });
      if (ops.length === 0) return;
      this.net.ref(); // the process waits on the transfer like on an answer
      try {
        await this.link!.post(s.qp!, new Float64Array(ops), held.targets);
      } catch (e) {
        if (this.session === s) this.net.closeConnection(s.conn, (e as Error).message);
        throw new KvtierError('KVTIER_PEER', `${this.url}: ${(e as Error).message}`, { cause: e });
      } finally {
        this.net.unref();
      }
    } finally {
      held.release();
    }
  }

  /**
   * A get over verbs: the server answers where the blocks lie and lends them; the client reads
   * them straight into the caller's memory, checks each against its checksum, and releases them.
   */
  private async verbsGet(s: Session, keys: Key[], memory: Memory, flags: number): Promise<Answer> {
    const rid = this.nextId();
    // The caller's memory stays held from before the request until the reads are done.
    const held = this.hold(memory, keys.length);
    try {
      const answer = await this.request(
        s,
        MsgType.GET,
        keys,
        undefined,
        flags | RequestFlag.REMOTE_READ,
        {
          rid,
          placed: true,
        },
      );
      if (answer.placements!.length === 0) return answer;
      await this.rdma(s, false, keys, memory, answer);
      if (this.session === s) this.net.send(s.conn, frame(MsgType.RELEASE, rid, Buffer.alloc(0)));
      const bs = s.blockBytes;
      const addon = native();
      answer.statuses.forEach((st, i) => {
        if (st !== Status.OK) return;
        const want = answer.checksums![i]!;
        const got = addon.crc32c(bytesOf(memory.targets[i]!, memory.slots[i]! * bs, bs));
        // The server flags every block it lends over verbs; one without a checksum is not
        // reported found, since nothing vouches for its bytes.
        if (want < 0 || got !== want) {
          answer.statuses[i] = Status.FAILED;
          this.corruptBlocks++;
        }
      });
      return answer;
    } finally {
      held.release();
    }
  }

  private nextId(): number {
    const rid = this.nextRequest;
    this.nextRequest = (this.nextRequest % 0xfffffffe) + 1; // never 0: 0 is the connection's
    return rid;
  }

  /**
   * A put in two steps for large blocks: the server reserves slots and answers which blocks it
   * wants, then reads those straight into the slots (no copy on its side).
   */
  private async placedPut(
    s: Session,
    keys: Key[],
    memory: Memory,
    flags: number,
  ): Promise<{ statuses: number[]; word: number }> {
    const rid = this.nextId();
    const verbs = s.qp !== undefined;
    // The server refuses offers beyond MAX_OFFERS waiting for their data: at most that many are
    // out between an offer and its PUT_DATA, which the server reads before any later offer.
    await this.offerSlot();
    let data: Promise<{ statuses: number[]; word: number }>;
    try {
      const accept = await this.request(s, MsgType.PUT_OFFER, keys, undefined, flags, {
        rid,
        placed: verbs,
      });
      if (!verbs) {
        data = this.request(s, MsgType.PUT_DATA, keys, memory, 0, {
          rid,
          accepted: accept.statuses,
        });
      } else {
        // Over verbs the client writes the blocks into the places the server named, then says so.
        await this.rdma(s, true, keys, memory, accept);
        data = this.request(s, MsgType.PUT_DATA, keys, undefined, RequestFlag.REMOTE_WRITTEN, {
          rid,
          accepted: accept.statuses,
        });
      }
    } finally {
      this.offerDone();
    }
    return data;
  }

  private async offerSlot(): Promise<void> {
    while (this.offers >= MAX_OFFERS) await new Promise<void>((r) => this.offerWaiters.push(r));
    this.offers++;
  }

  private offerDone(): void {
    this.offers--;
    this.offerWaiters.shift()?.();
  }

  /** Splits a batch into frames the server accepts and runs them at once. */
  private async batched(
    type: number,
    keys: KeyChain | readonly KeyLike[],
    target?: Target,
    at?: readonly number[],
    flags = 0,
  ): Promise<{ statuses: number[]; word: number }> {
    const s = this.ready();
    const list = toKeys(keys);
    const slots = at ?? list.map((_, i) => i);
    if (target !== undefined) {
      if (target instanceof DeviceRegion) {
        throw new KvtierError(
          'KVTIER_BAD_ARGUMENT',
          'peer transfers move host memory; gather GPU blocks into a pinned Region first',
        );
      }
      const size = target.byteLength;
      if (target instanceof Region) target.assertOpen();
      if (slots.length !== list.length) {
        throw new KvtierError('KVTIER_BAD_ARGUMENT', 'one block index per key is needed');
      }
      const highest = slots.reduce((m, x) => Math.max(m, x), -1);
      if (
        slots.some((x) => !Number.isSafeInteger(x) || x < 0) ||
        size < (highest + 1) * s.blockBytes
      ) {
        throw new KvtierError(
          'KVTIER_BAD_ARGUMENT',
          `${size} bytes cannot hold ${highest + 1} blocks of ${s.blockBytes} bytes`,
        );
      }
    }
    if (target !== undefined && list.length > 0 && list.length * s.blockBytes <= COALESCE_BYTES) {
      return this.coalesce(s, type, flags, list, target, slots);
    }
    return this.frames(
      s,
      type,
      flags,
      list,
      target ? { targets: list.map(() => target), slots } : undefined,
    );
  }

  /**
   * Puts and gets asked for in the same turn of the event loop (many callers each moving a block
   * or a few) leave as one request: one frame, one answer, one event on each side instead of one
   * per caller. Each caller gets its own share of the statuses back.
   */
  private coalesce(
    s: Session,
    type: number,
    flags: number,
    keys: Key[],
    target: Target,
    slots: readonly number[],
  ): Promise<{ statuses: number[]; word: number }> {
    // The caller's memory stays in use from now until its answer, as if it had left at once.
    const region = regionOf(target);
    region?.assertOpen();
    region?.inFlight.begin();
    const end = (): void => region?.inFlight.end();
    return new Promise((resolve, reject) => {
      const name = `${type}:${flags}`;
      let queue = this.queued.get(name);
      if (!queue) {
        queue = [];
        this.queued.set(name, queue);
        setImmediate(() => this.flush(name, type, flags));
      }
      queue.push({
        session: s,
        keys,
        target,
        slots,
        resolve: (r) => {
          end();
          resolve(r);
        },
        reject: (e) => {
          end();
          reject(e);
        },
      });
    });
  }

  private flush(name: string, type: number, flags: number): void {
    const queue = this.queued.get(name) ?? [];
    this.queued.delete(name);
    let s: Session;
    try {
      s = this.ready();
    } catch (e) {
      for (const w of queue) w.reject(e as Error);
      return;
    }
    // A caller checked its sizes against the session it saw; a new session may differ.
    const live = queue.filter((w) => {
      if (w.session === s) return true;
      w.reject(new KvtierError('KVTIER_PEER', `the connection to ${this.url} was replaced`));
      return false;
    });
    // Requests of up to COALESCE_BYTES together: callers wait on each other only that much.
    let group: Waiting[] = [];
    let bytes = 0;
    for (const w of live) {
      const b = w.keys.length * s.blockBytes;
      if (group.length > 0 && bytes + b > COALESCE_BYTES) {
        this.send(s, type, flags, group);
        group = [];
        bytes = 0;
      }
      group.push(w);
      bytes += b;
    }
    if (group.length > 0) this.send(s, type, flags, group);
  }

  /** One request for the keys of several callers; each gets its own statuses back. */
  private send(s: Session, type: number, flags: number, live: Waiting[]): void {
    const keys: Key[] = [];
    const targets: Target[] = [];
    const slots: number[] = [];
    for (const w of live) {
      for (let i = 0; i < w.keys.length; i++) {
        keys.push(w.keys[i]!);
        targets.push(w.target);
        slots.push(w.slots[i]!);
      }
    }
    let done: Promise<{ statuses: number[]; word: number }>;
    try {
      done = this.frames(s, type, flags, keys, { targets, slots });
    } catch (e) {
      for (const w of live) w.reject(e as Error);
      return;
    }
    done.then(
      ({ statuses }) => {
        let from = 0;
        for (const w of live) {
          w.resolve({ statuses: statuses.slice(from, from + w.keys.length), word: 0 });
          from += w.keys.length;
        }
      },
      (e: unknown) => {
        for (const w of live) w.reject(e as Error);
      },
    );
  }

  /** Splits a batch into frames the server accepts and runs them at once. */
  private async frames(
    s: Session,
    type: number,
    flags: number,
    list: Key[],
    memory: Memory | undefined,
  ): Promise<{ statuses: number[]; word: number }> {
    const chunks: Promise<{ statuses: number[]; word: number }>[] = [];
    for (let from = 0; from < list.length || from === 0; from += s.maxBatch) {
      const part = list.slice(from, from + s.maxBatch);
      const mem = memory
        ? {
            targets: memory.targets.slice(from, from + s.maxBatch),
            slots: memory.slots.slice(from, from + s.maxBatch),
          }
        : undefined;
      // Verbs puts go in two steps (the client writes into the offered slots). Over TCP, a server
      // whose puts land in its store (Capability.LANDS) copies nothing anyway: an offer would
      // only add a round trip.
      const verbs = s.qp !== undefined;
      const placed =
        type === MsgType.PUT &&
        mem &&
        (verbs || (!s.lands && s.blockBytes >= PLACED_PUT_MIN_BYTES));
      if (placed) chunks.push(this.placedPut(s, part, mem, flags));
      else if (type === MsgType.GET && mem && verbs)
        chunks.push(this.verbsGet(s, part, mem, flags));
      else chunks.push(this.request(s, type, part, mem, flags));
      if (list.length === 0) break;
    }
    const results = await Promise.all(chunks);
    const statuses = results.flatMap((r) => r.statuses);
    // LOOKUP's word is the prefix of its chunk; the whole prefix runs through full chunks only.
    let word = 0;
    for (const r of results) {
      word += r.word;
      if (r.word < r.statuses.length) break;
    }
    return { statuses, word };
  }

  /** Stores block i of src (bytes [i*blockBytes, (i+1)*blockBytes)) under keys[i] on the peer. */
  async put(
    keys: KeyChain | readonly KeyLike[],
    src: Target,
    options: PeerPutOptions = {},
  ): Promise<PeerPutResult> {
    checkTarget(src, 'src');
    return this.putAt(keys, src, undefined, options);
  }

  /** @internal put() with block `at[i]` of src under keys[i]. */
  async putAt(
    keys: KeyChain | readonly KeyLike[],
    src: Target,
    at?: readonly number[],
    options: PeerPutOptions = {},
  ): Promise<PeerPutResult> {
    if (options === null || typeof options !== 'object') {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', 'put options must be an object');
    }
    const durable = options.durable ?? this.options.durable ?? false;
    if (typeof durable !== 'boolean') {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', 'durable must be a boolean');
    }
    if (durable && !this.ready().durable) {
      throw new KvtierError(
        'KVTIER_NOT_AVAILABLE',
        `${this.url} cannot make puts durable (it has no file tier, or predates durable puts)`,
      );
    }
    const flags = durable ? RequestFlag.DURABLE : 0;
    const { statuses } = await this.batched(MsgType.PUT, keys, src, at, flags);
    const status = statuses.map((s) =>
      s === Status.OK ? 'stored' : s === Status.PRESENT ? 'present' : 'rejected',
    ) as PeerPutResult['status'];
    const count = (w: string): number => status.filter((s) => s === w).length;
    return {
      status,
      stored: count('stored'),
      present: count('present'),
      rejected: count('rejected'),
    };
  }

  /**
   * Reads blocks into dst (block i at i*blockBytes). A block is reported found only once all of
   * its bytes arrived; bytes of missing blocks are left untouched.
   */
  async get(keys: KeyChain | readonly KeyLike[], dst: Target): Promise<PeerGetResult> {
    checkTarget(dst, 'dst');
    return this.getAt(keys, dst);
  }

  /**
   * @internal get() with block `at[i]` of dst for keys[i]; `localOnly` asks the peer not to
   * fetch from the cluster on a miss (RequestFlag.LOCAL_ONLY).
   */
  async getAt(
    keys: KeyChain | readonly KeyLike[],
    dst: Target,
    at?: readonly number[],
    options: { localOnly?: boolean } = {},
  ): Promise<PeerGetResult> {
    const flags = options.localOnly ? RequestFlag.LOCAL_ONLY : 0;
    const { statuses } = await this.batched(MsgType.GET, keys, dst, at, flags);
    const found = statuses.map((s) => s === Status.OK);
    let prefix = 0;
    while (prefix < found.length && found[prefix]) prefix++;
    return { found, count: found.filter(Boolean).length, prefix };
  }

  async lookup(keys: KeyChain | readonly KeyLike[]): Promise<PeerLookupResult> {
    const { statuses, word } = await this.batched(MsgType.LOOKUP, keys);
    return { present: statuses.map((s) => s === Status.OK), prefix: word };
  }

  /** Removes blocks from the peer; resolves with how many it removed (pinned ones stay). */
  async delete(keys: KeyChain | readonly KeyLike[]): Promise<{ removed: number }> {
    const { statuses } = await this.batched(MsgType.DELETE, keys);
    return { removed: statuses.filter((s) => s === Status.OK).length };
  }

  /** Closes the connection; requests in flight reject with KVTIER_PEER. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    if (this.session) this.net.closeConnection(this.session.conn, 'closed by the client');
    // Requests still out reject through onClose, which the transport delivers before it stops.
    // Its close event is waited for too (briefly): one still queued when the process exits
    // would be delivered to an environment that can no longer run JavaScript.
    for (let i = 0; i < 200 && (this.pending.size > 0 || this.session); i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    while (this.pending.size > 0) await new Promise((r) => setTimeout(r, 5));
    this.net.close();
    this.link?.close();
  }
}

/** The bytes [offset, offset + length) of a host target, as a view. */
function bytesOf(t: Target, offset: number, length: number): Uint8Array {
  if (t instanceof Region) return t.view(offset, length);
  if (t instanceof DeviceRegion) throw new KvtierError('KVTIER_BAD_ARGUMENT', 'not host memory');
  if (ArrayBuffer.isView(t)) return new Uint8Array(t.buffer, t.byteOffset + offset, length);
  return new Uint8Array(t, offset, length);
}
