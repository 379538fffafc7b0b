/**
 * Two-step puts: PUT_OFFER reserves host-tier slots and answers which blocks the server wants;
 * the data then goes straight into the slots, copied once (by the kernel over TCP, by the
 * client's RDMA WRITE over verbs), and PUT_DATA commits them.
 */
import { nativeTargetOf } from '../../core/engine.js';
import type { NativeTarget, NetEvent } from '../../core/native.js';
import type { Key } from '../../keys/keys.js';
import type { CallOptions } from '../../warehouse/calls.js';
import type { Reservation } from '../../warehouse/warehouse.js';
import {
  decodeResults,
  encodePlacedResults,
  encodeResults,
  ErrorKind,
  frame,
  MsgType,
  type Placement,
  RequestFlag,
  Status,
} from '../protocol.js';
import type { Transport } from '../transports.js';
import type { ConnState, Offer } from './conn.js';
import type { ServerCore } from './core.js';

export class Offers {
  /** How each transport tells the client where an offer's blocks go. */
  private readonly accept: Record<Transport['kind'], (s: ConnState, rid: number, o: Offer) => void>;

  constructor(private readonly core: ServerCore) {
    this.accept = {
      tcp: (s, rid, o) => this.acceptInFrame(s, rid, o),
      verbs: (s, rid, o) => this.acceptPlaced(s, rid, o),
    };
  }

  /** Lets go of an offer whose data will not come: its slots or receive region. */
  drop(offer: Offer): void {
    clearTimeout(offer.timer);
    offer.reservation?.abort();
    if (offer.receive) this.core.release(offer.receive);
  }

  /**
   * A two-step put: reserves host-tier slots and tells the transport where the blocks of the
   * coming PUT_DATA go, so the bytes are copied once.
   */
  async offer(
    state: ConnState,
    rid: number,
    keys: Key[],
    durable: boolean,
    call: CallOptions,
  ): Promise<void> {
    const { core } = this;
    const wh = state.store!;
    if (state.offers.has(rid) || state.offering.has(rid)) {
      core.drop(state, ErrorKind.PROTOCOL, `request id ${rid} already has an offer`);
      return;
    }
    // Counted from now (the handlers' limit), not once the reservation is made.
    state.offering.add(rid);
    let reservation: Reservation | undefined;
    try {
      // A store that cannot reserve (a tenant's view) takes the data like a one-step put's.
      reservation = wh.hostSlots?.reserve
        ? await wh.hostSlots.reserve(keys, undefined, call)
        : undefined;
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
      () => core.drop(state, ErrorKind.PROTOCOL, 'put data did not follow its offer in time'),
      core.options.offerTimeoutMs ?? 30_000,
    );
    timer.unref();
    const offer: Offer = {
      keys,
      statuses,
      reservation,
      timer,
      transport: state.transport,
      durable,
      call,
    };
    state.offers.set(rid, offer);
    this.accept[offer.transport.kind](state, rid, offer);
  }

  /**
   * TCP: PUT_ACCEPT, and the transport told to read the coming PUT_DATA's blocks straight into
   * the reserved slots (without a reservation they arrive like a one-step put's).
   */
  private acceptInFrame(state: ConnState, rid: number, offer: Offer): void {
    const { core } = this;
    const meta = encodeResults(offer.statuses);
    const reservation = offer.reservation;
    if (!reservation) {
      core.reply(state, MsgType.PUT_ACCEPT, rid, meta);
      return;
    }
    const bs = core.blockBytes;
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
    core.net.send(state.id, frame(MsgType.PUT_ACCEPT, rid, meta), targets, undefined, 0, false, {
      type: MsgType.PUT_DATA,
      requestId: rid,
      spans: new Float64Array(spans),
    });
  }

  /**
   * Verbs: PUT_ACCEPT names where the client writes each accepted block with RDMA WRITE: the
   * reserved slots or, without a reservation, a registered receive region.
   */
  private acceptPlaced(state: ConnState, rid: number, offer: Offer): void {
    let placements: Placement[];
    try {
      placements = this.placements(offer);
    } catch (e) {
      state.offers.delete(rid);
      this.drop(offer);
      throw e;
    }
    this.core.reply(
      state,
      MsgType.PUT_ACCEPT,
      rid,
      encodePlacedResults(offer.statuses, placements),
    );
  }

  private placements(offer: Offer): Placement[] {
    const { core } = this;
    const bs = core.blockBytes;
    const placements: Placement[] = [];
    if (offer.reservation) {
      for (const x of offer.reservation.slots) {
        if (typeof x !== 'string') {
          placements.push(core.placement(nativeTargetOf(x.target), x.offset, 'write'));
        }
      }
      return placements;
    }
    const accepted = offer.statuses.filter((x) => x === Status.OK).length;
    if (accepted > 0) {
      offer.receive = core.pool.take(accepted * bs);
      offer.receive.inFlight.begin();
      for (let n = 0; n < accepted; n++) {
        placements.push(core.placement(offer.receive.native, n * bs, 'write'));
      }
    }
    return placements;
  }

  /** PUT_DATA: checks it against its offer and stores the blocks; undefined when refused. */
  onPutData(state: ConnState, ev: NetEvent): Promise<unknown> | undefined {
    const { core } = this;
    const rid = ev.requestId!;
    const offer = state.offers.get(rid);
    if (!offer) {
      core.drop(state, ErrorKind.PROTOCOL, `put data for request ${rid} without an offer`);
      return undefined;
    }
    let statuses: number[];
    try {
      statuses = decodeResults(ev.meta!, offer.keys.length).statuses;
    } catch (e) {
      core.drop(state, ErrorKind.PROTOCOL, (e as Error).message);
      return undefined;
    }
    const bs = core.blockBytes;
    const accepted = offer.statuses.filter((x) => x === Status.OK).length;
    const remote = offer.transport.remote;
    const written = (ev.flags ?? 0) & RequestFlag.REMOTE_WRITTEN;
    if (
      statuses.some((x, i) => x !== offer.statuses[i]) ||
      written !== offer.transport.putDataFlag ||
      (ev.payloadBytes ?? 0) !== (remote ? 0 : accepted * bs) ||
      (!remote && offer.reservation !== undefined && accepted > 0 && !ev.placed)
    ) {
      core.drop(state, ErrorKind.PROTOCOL, 'put data does not match its offer');
      return undefined;
    }
    state.offers.delete(rid);
    clearTimeout(offer.timer);
    // Written by RDMA: the server has no checksums of its own yet; commit() computes them.
    const payload = remote
      ? offer.receive?.view(0, accepted * bs)
      : core.payloadOf(ev, accepted * bs);
    const work = this.finish(state, rid, offer, payload, remote ? undefined : ev.checksums);
    const receive = offer.receive;
    return core.track(
      state,
      MsgType.PUT_DATA,
      rid,
      receive ? work.finally(() => core.release(receive)) : work,
    );
  }

  private async finish(
    state: ConnState,
    rid: number,
    offer: Offer,
    payload: Uint8Array | undefined,
    checksums: Uint32Array | undefined,
  ): Promise<void> {
    const { core } = this;
    const wh = state.store!;
    const result = offer.statuses.map((x) => (x === Status.OK ? Status.REJECTED : x));
    const accepted = offer.statuses.filter((x) => x === Status.OK).length;
    if (offer.reservation) core.putCounts.placed += accepted;
    else core.putCounts.copied += accepted;
    if (offer.reservation) {
      const { stored } = await offer.reservation.commit(checksums);
      for (const i of stored) result[i] = Status.OK;
    } else {
      const sent = offer.keys.filter((_, i) => offer.statuses[i] === Status.OK);
      const put = sent.length > 0 ? (await wh.put(sent, payload!, offer.call)).status : [];
      let next = 0;
      offer.statuses.forEach((x, i) => {
        if (x !== Status.OK) return;
        const s = put[next++];
        if (s === 'stored' || s === 'present') result[i] = Status.OK;
      });
    }
    const answer = offer.durable ? await core.persisted(state, offer.keys, result) : result;
    core.reply(state, MsgType.PUT_RESULT, rid, encodeResults(answer));
  }
}
