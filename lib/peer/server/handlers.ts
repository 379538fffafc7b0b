/**
 * The requests of an authenticated connection: checked against the protocol's rules and the
 * connection's transport (Transport.refuses), then served from the Warehouse. PUT, LOOKUP and
 * DELETE are answered here; GET by gets.ts, PUT_OFFER and PUT_DATA by offers.ts.
 */
import { randomBytes } from 'node:crypto';

import type { NetEvent } from '../../core/native.js';
import type { Key } from '../../keys/keys.js';
import type { CallOptions } from '../../warehouse/calls.js';
import { decodeKeysAndCall } from '../call-codec.js';
import {
  encodeResults,
  ErrorKind,
  MAX_OFFERS,
  MAX_STATS_BYTES,
  MsgType,
  RequestFlag,
  Status,
} from '../protocol.js';
import type { ConnState } from './conn.js';
import type { ServerCore } from './core.js';
import { Gets } from './gets.js';
import { Offers } from './offers.js';

const REQUESTS: readonly number[] = [
  MsgType.PUT,
  MsgType.GET,
  MsgType.LOOKUP,
  MsgType.DELETE,
  MsgType.PUT_OFFER,
];

/** The requests a call section may follow (RequestFlag.CALL); on others the bit means nothing. */
const WITH_CALL: readonly number[] = [MsgType.PUT, MsgType.GET, MsgType.LOOKUP, MsgType.PUT_OFFER];

/**
 * The prefix of the request ids made up for frames whose call names none. A client may send any
 * string as its request id; without tenants, one that matched a made-up id would join another
 * connection's request. The random part, drawn once per process, is one no client can know.
 */
const FRAME_REQUEST = `\u0001peer-frame-${randomBytes(12).toString('hex')}-`;

export class Handlers {
  readonly offers: Offers;
  private readonly gets: Gets;
  /** Names the requests of frames whose call section gives no request id. */
  private callSerial = 0;

  constructor(private readonly core: ServerCore) {
    this.offers = new Offers(core);
    this.gets = new Gets(core);
  }

  /** One request frame; the work it started, if any (its frame's memory is held until then). */
  onRequest(state: ConnState, ev: NetEvent): Promise<unknown> | undefined {
    const { core } = this;
    const rid = ev.requestId!;
    const type = ev.type!;
    const flags = ev.flags ?? 0;
    if (type === MsgType.PUT_DATA) return this.offers.onPutData(state, ev);
    const refused = state.transport.refuses(type, flags);
    if (refused !== undefined) {
      core.drop(state, ErrorKind.PROTOCOL, refused);
      return undefined;
    }
    if (type === MsgType.RELEASE) {
      // A RELEASE for a request with no lease (never lent anything, or already timed out) is
      // ignored: the client cannot tell those apart from a lease that just ended.
      state.leases.get(rid)?.();
      return undefined;
    }
    if (type === MsgType.STATS && core.options.tenants) return this.stats(state, ev);
    if (!REQUESTS.includes(type)) {
      core.drop(state, ErrorKind.PROTOCOL, `unknown message type ${type}`);
      return undefined;
    }
    let keys: Key[];
    let call: CallOptions | undefined;
    try {
      const hasCall = (flags & RequestFlag.CALL) !== 0 && WITH_CALL.includes(type);
      ({ keys, call } = decodeKeysAndCall(ev.meta!, core.maxBatch, hasCall));
    } catch (e) {
      const kind = /exceeds the limit/.test((e as Error).message)
        ? ErrorKind.LIMIT
        : ErrorKind.PROTOCOL;
      core.drop(state, kind, (e as Error).message);
      return undefined;
    }
    const bs = core.blockBytes;
    const payloadBytes = ev.payloadBytes ?? 0;
    const wantPayload = type === MsgType.PUT ? keys.length * bs : 0;
    if (payloadBytes !== wantPayload) {
      core.drop(
        state,
        ErrorKind.PROTOCOL,
        `a ${keys.length}-key request carries ${payloadBytes} payload bytes, not ${wantPayload}`,
      );
      return undefined;
    }
    // An offer over the limit is refused on its own: the offers already accepted go on.
    if (type === MsgType.PUT_OFFER && state.offers.size + state.offering.size >= MAX_OFFERS) {
      core.refuse(
        state,
        rid,
        ErrorKind.LIMIT,
        `more than ${MAX_OFFERS} put offers waiting for data`,
      );
      return undefined;
    }
    // The operator's token reads statistics; it never reads or writes anyone's blocks.
    if (state.operator) {
      core.refuse(state, rid, ErrorKind.AUTH, "the operator's token may only ask for STATS");
      return undefined;
    }
    const durable = core.durable(type, flags);
    if (durable && !core.canPersist(state)) {
      const message = 'durable puts need a file tier, and this server has none';
      core.refuse(state, rid, ErrorKind.INTERNAL, message);
      return undefined;
    }
    if (core.shuttingDown) {
      core.refuse(state, rid, ErrorKind.SHUTTING_DOWN, 'shutting down');
      return undefined;
    }
    // With tenants nothing lands: landed slots would be stored under the keys as sent, outside
    // the tenant's namespace (the LANDS capability is not offered, so clients put by copy).
    const tenants = core.options.tenants !== undefined;
    // A frame is one request to the policy, however the server serves it (lent blocks and blocks
    // read up are two warehouse calls): one without a request id of its own gets one.
    const given: CallOptions = call
      ? { ...call, request: call.request ?? `${FRAME_REQUEST}${++this.callSerial}` }
      : {};
    if (!tenants && (type === MsgType.PUT || type === MsgType.PUT_OFFER)) core.landing.demand();
    if (!tenants && type === MsgType.PUT && ev.landed) {
      return core.track(state, type, rid, this.putLanded(state, rid, keys, ev, durable, given));
    }
    const payload = core.payloadOf(ev, payloadBytes);
    return core.track(state, type, rid, this.serve(state, type, rid, keys, payload, flags, given));
  }

  private async serve(
    state: ConnState,
    type: number,
    rid: number,
    keys: Key[],
    payload: Uint8Array | undefined,
    flags: number,
    call: CallOptions,
  ): Promise<void> {
    const { core } = this;
    const wh = state.store!;
    switch (type) {
      case MsgType.PUT: {
        core.putCounts.copied += keys.length;
        const put = keys.length > 0 ? (await wh.put(keys, payload!, call)).status : [];
        let statuses: number[] = put.map((s) =>
          s === 'present' ? Status.PRESENT : s === 'stored' ? Status.OK : Status.REJECTED,
        );
        if (core.durable(type, flags)) statuses = await core.persisted(state, keys, statuses);
        core.reply(state, MsgType.PUT_RESULT, rid, encodeResults(statuses));
        return;
      }
      case MsgType.GET: {
        if (keys.length === 0) {
          core.reply(state, MsgType.GET_RESULT, rid, encodeResults([]));
          return;
        }
        // A node fetching for the cluster asks for local blocks only (LOCAL_ONLY): no second hop.
        const localOnly = (flags & RequestFlag.LOCAL_ONLY) !== 0;
        // REMOTE_READ (verbs only: Transport.refuses) asks for the blocks lent, not sent.
        if ((flags & RequestFlag.REMOTE_READ) !== 0) {
          return this.gets.lend(state, rid, keys, localOnly, call);
        }
        return this.gets.send(state, rid, keys, localOnly, call);
      }
      case MsgType.PUT_OFFER:
        return this.offers.offer(state, rid, keys, core.durable(type, flags), call);
      case MsgType.LOOKUP: {
        const r = wh.lookup(keys, call);
        const statuses = r.tiers.map((t) => (t >= 0 ? Status.OK : Status.MISSING));
        core.reply(state, MsgType.LOOKUP_RESULT, rid, encodeResults(statuses, r.prefix));
        return;
      }
      case MsgType.DELETE: {
        const statuses = (await wh.evict(keys)).status.map((s) =>
          s === 'absent' ? Status.MISSING : s === 'removed' ? Status.OK : Status.REJECTED,
        );
        core.reply(state, MsgType.DELETE_RESULT, rid, encodeResults(statuses));
        return;
      }
    }
  }

  /**
   * STATS: the statistics of every tenant, as JSON, to the operator only. A tenant asking is
   * refused with AUTH, like a request its token does not allow; the connection goes on.
   */
  private stats(state: ConnState, ev: NetEvent): undefined {
    const { core } = this;
    const rid = ev.requestId!;
    if ((ev.meta?.length ?? 0) !== 0 || (ev.payloadBytes ?? 0) !== 0) {
      core.drop(state, ErrorKind.PROTOCOL, 'STATS carries no metadata and no payload');
      return undefined;
    }
    if (!state.operator) {
      core.refuse(state, rid, ErrorKind.AUTH, "only the operator's token may ask for STATS");
      return undefined;
    }
    const json = Buffer.from(JSON.stringify(core.options.tenants!.stats()), 'utf8');
    if (json.length > MAX_STATS_BYTES) {
      core.refuse(state, rid, ErrorKind.LIMIT, `the statistics take ${json.length} bytes`);
      return undefined;
    }
    core.reply(state, MsgType.STATS_RESULT, rid, json);
    return undefined;
  }

  /** A one-step put whose blocks landed straight in claimed host-tier slots (Landing). */
  private async putLanded(
    state: ConnState,
    rid: number,
    keys: Key[],
    ev: NetEvent,
    durable: boolean,
    call: CallOptions,
  ): Promise<void> {
    const { core } = this;
    const tokens = ev.landed!;
    ev.landed = undefined; // the slots are this put's now, not onFrame()'s to give back
    core.putCounts.landed += keys.length;
    const stored = await core.landing.store(keys, tokens, ev.checksums!, call);
    // A key repeated in the batch is stored once; every copy of it answers as stored.
    const mine = new Set(keys.filter((_, i) => stored[i]));
    let statuses: number[] = keys.map((k) => (mine.has(k) ? Status.OK : Status.PRESENT));
    // Landed in host-tier slots: a durable put also waits for their synced file copies.
    if (durable) statuses = await core.persisted(state, keys, statuses);
    core.reply(state, MsgType.PUT_RESULT, rid, encodeResults(statuses));
  }
}
