/**
 * A client of a kvtier peer (`kvtier serve`): batched put, get, lookup and delete over the peer
 * protocol. Many requests may be in flight on one connection; the connection, its requests and
 * reconnecting are session.ts's, small requests leave together (coalescing.ts), and the blocks
 * travel the session's data path (TCP frames, or RDMA over verbs).
 */
import { lookup as dnsLookup } from 'node:dns/promises';

import { checkTarget, type Target } from '../../core/engine.js';
import { KvtierError } from '../../core/errors.js';
import { requireHostMemory } from '../../core/bytes.js';
import { Region } from '../../core/region.js';
import { string } from '../../core/validate.js';
import { toKeys, type Key, type KeyChain, type KeyLike } from '../../keys/keys.js';
import {
  BATCH_FIXED_BYTES,
  KEY_ENTRY_BYTES,
  MsgType,
  parseAddress,
  RequestFlag,
  Status,
} from '../protocol.js';
import type { CallOptions } from '../../warehouse/calls.js';
import { chooseTransport } from '../transports.js';
import { CallSections, checkPeerCall } from './calls.js';
import { Coalescer, type Batch } from './coalescing.js';
import { TcpPath, TwoStepPuts } from './data-path.js';
import { handshake } from './handshake.js';
import {
  checkConnectOptions,
  secretOf,
  type ConnectOptions,
  type PeerPutOptions,
} from './options.js';
import { type Memory } from './memory.js';
import { Sessions, type Session } from './session.js';
import { VerbsPath } from './verbs-path.js';

export { connectOptions, type ConnectOptions, type PeerPutOptions } from './options.js';

/**
 * What a get or lookup tells the server's eviction policy about its request: the engine's session
 * and request ids and a hint (docs/policies.md, "Hints through the API"). Sent only to servers
 * that read them (Capability.CALLS); an older server gets the request without them.
 */
export type PeerCallOptions = CallOptions;

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

/** Connects and authenticates; rejects with KVTIER_AUTH, KVTIER_PROTOCOL or KVTIER_PEER. */
export async function connect(url: string, given: ConnectOptions = {}): Promise<PeerClient> {
  const { host, port } = parseAddress(string(url, 'url'));
  const options = checkConnectOptions(given);
  const secret = await secretOf(options);
  const choice = chooseTransport(options.transport ?? 'auto');
  const address = (await dnsLookup(host).catch((e: unknown) => {
    throw new KvtierError('KVTIER_PEER', `cannot resolve ${host}`, { cause: e });
  })) as { address: string };
  const client = new PeerClient(url, address.address, port, secret, options, choice.kind);
  await client.open();
  return client;
}

export class PeerClient {
  private readonly sessions: Sessions;
  private readonly verbs: VerbsPath;
  private readonly tcp: TcpPath;
  private readonly twoStep: TwoStepPuts;
  private readonly coalescer: Coalescer;
  private readonly calls = new CallSections();
  readonly timeoutMs: number;
  /** Why this transport was chosen. */
  transportReason = '';

  /** @internal */
  constructor(
    readonly url: string,
    address: string,
    port: number,
    secret: Buffer,
    private readonly options: ConnectOptions,
    private readonly wantTransport: 'tcp' | 'verbs',
  ) {
    this.sessions = new Sessions(url, options, (events) =>
      handshake(
        {
          net: this.sessions.net,
          url,
          address,
          port,
          secret,
          options,
          want: wantTransport,
          queuePairs: this.verbs,
          paths: { tcp: this.tcp, verbs: this.verbs },
          chose: (reason) => (this.transportReason = reason),
        },
        events,
      ),
    );
    this.timeoutMs = this.sessions.timeoutMs;
    this.verbs = new VerbsPath(this.sessions);
    this.tcp = new TcpPath(this.sessions);
    this.twoStep = new TwoStepPuts(this.sessions);
    this.coalescer = new Coalescer(this.sessions, (s, type, flags, keys, memory, call) =>
      this.frames(s, type, flags, keys, memory, call),
    );
  }

  get blockBytes(): number {
    return this.sessions.session?.blockBytes ?? this.options.blockBytes ?? 0;
  }

  get maxBatch(): number {
    return this.sessions.session?.maxBatch ?? 0;
  }

  get connected(): boolean {
    return this.sessions.session !== undefined;
  }

  get transport(): 'tcp' | 'verbs' {
    return this.sessions.session?.transport.kind ?? this.wantTransport;
  }

  /** Blocks received whose bytes failed their checksum (reported missing). */
  get corrupt(): number {
    return this.sessions.corruptBlocks;
  }

  /** @internal Connects and runs the handshake. */
  open(): Promise<void> {
    return this.sessions.open();
  }

  /** Waits until connected again (or `ms` pass); resolves with whether it is connected. */
  waitConnected(ms = this.timeoutMs): Promise<boolean> {
    return this.sessions.waitConnected(ms);
  }

  /** Splits a batch into frames the server accepts and runs them at once. */
  private async batched(
    type: number,
    keys: KeyChain | readonly KeyLike[],
    target?: Target,
    at?: readonly number[],
    flags = 0,
    given: CallOptions = {},
  ): Promise<Batch> {
    const checked = checkPeerCall(given);
    const s = this.sessions.ready();
    const list = toKeys(keys);
    // Advice only: a server that cannot read a call section serves the request without it.
    const call = s.calls ? this.calls.section(checked) : undefined;
    if (call) flags |= RequestFlag.CALL;
    const slots = at ?? list.map((_, i) => i);
    if (target !== undefined) {
      requireHostMemory(target, 'a peer transfer target');
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
    if (target !== undefined && this.coalescer.fits(s, list.length)) {
      return this.coalescer.add(s, type, flags, list, target, slots, call);
    }
    return this.frames(
      s,
      type,
      flags,
      list,
      target ? { targets: list.map(() => target), slots } : undefined,
      call,
    );
  }

  /** Splits a batch into frames the server accepts and runs them at once. */
  private async frames(
    s: Session,
    type: number,
    flags: number,
    list: Key[],
    memory: Memory | undefined,
    call?: Buffer,
  ): Promise<Batch> {
    const chunks: Promise<Batch>[] = [];
    // A call section takes metadata room the server allows beside a full batch (it announces a
    // larger maxMeta); fewer keys per frame if it allows less.
    const step = call
      ? Math.max(
          1,
          Math.min(
            s.maxBatch,
            Math.floor((s.maxMeta - BATCH_FIXED_BYTES - call.length) / KEY_ENTRY_BYTES),
          ),
        )
      : s.maxBatch;
    for (let from = 0; from < list.length || from === 0; from += step) {
      const part = list.slice(from, from + step);
      const mem = memory
        ? {
            targets: memory.targets.slice(from, from + step),
            slots: memory.slots.slice(from, from + step),
          }
        : undefined;
      if (type === MsgType.PUT && mem && s.transport.twoStepPut(s.blockBytes, s.lands)) {
        chunks.push(this.twoStep.put(s, part, mem, flags, call));
      } else if (type === MsgType.GET && mem) {
        chunks.push(s.path.get(s, part, mem, flags, call));
      } else {
        chunks.push(this.sessions.request(s, type, part, mem, flags, call ? { call } : undefined));
      }
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
    if (durable && !this.sessions.ready().durable) {
      throw new KvtierError(
        'KVTIER_NOT_AVAILABLE',
        `${this.url} cannot make puts durable (it has no file tier, or predates durable puts)`,
      );
    }
    const flags = durable ? RequestFlag.DURABLE : 0;
    const { statuses } = await this.batched(MsgType.PUT, keys, src, at, flags, options);
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
  async get(
    keys: KeyChain | readonly KeyLike[],
    dst: Target,
    options: PeerCallOptions = {},
  ): Promise<PeerGetResult> {
    checkTarget(dst, 'dst');
    return this.getAt(keys, dst, undefined, options);
  }

  /**
   * @internal get() with block `at[i]` of dst for keys[i]; `localOnly` asks the peer not to
   * fetch from the cluster on a miss (RequestFlag.LOCAL_ONLY).
   */
  async getAt(
    keys: KeyChain | readonly KeyLike[],
    dst: Target,
    at?: readonly number[],
    options: { localOnly?: boolean } & PeerCallOptions = {},
  ): Promise<PeerGetResult> {
    if (options === null || typeof options !== 'object') {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', 'get options must be an object');
    }
    const flags = options.localOnly ? RequestFlag.LOCAL_ONLY : 0;
    const { statuses } = await this.batched(MsgType.GET, keys, dst, at, flags, options);
    const found = statuses.map((s) => s === Status.OK);
    let prefix = 0;
    while (prefix < found.length && found[prefix]) prefix++;
    return { found, count: found.filter(Boolean).length, prefix };
  }

  /**
   * Which blocks the peer holds. Its session, hint and request id (like a Warehouse lookup's)
   * change nothing on the server: they are checked and go no further.
   */
  async lookup(
    keys: KeyChain | readonly KeyLike[],
    options: PeerCallOptions = {},
  ): Promise<PeerLookupResult> {
    if (options === null || typeof options !== 'object') {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', 'lookup options must be an object');
    }
    const { statuses, word } = await this.batched(
      MsgType.LOOKUP,
      keys,
      undefined,
      undefined,
      0,
      options,
    );
    return { present: statuses.map((s) => s === Status.OK), prefix: word };
  }

  /** Removes blocks from the peer; resolves with how many it removed (pinned ones stay). */
  async delete(keys: KeyChain | readonly KeyLike[]): Promise<{ removed: number }> {
    const { statuses } = await this.batched(MsgType.DELETE, keys);
    return { removed: statuses.filter((s) => s === Status.OK).length };
  }

  /** Closes the connection; requests in flight reject with KVTIER_PEER. */
  async close(): Promise<void> {
    await this.sessions.close();
    this.verbs.close();
  }
}
