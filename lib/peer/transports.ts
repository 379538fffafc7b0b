/**
 * Which transport carries a peer connection's blocks. TCP always works; RDMA verbs needs
 * libibverbs and a device whose port is up and can make a queue pair. An explicit request for verbs that
 * cannot be met fails with KVTIER_NOT_AVAILABLE; 'auto' reports what it chose and why.
 */
import { KvtierError } from '../core/errors.js';
import { describe } from '../core/validate.js';
import { native } from '../core/native.js';
import { Capability, MsgType, PLACED_PUT_MIN_BYTES, RequestFlag, TransportId } from './protocol.js';

export type TransportOption = 'auto' | 'tcp' | 'verbs';

export interface TransportChoice {
  kind: 'tcp' | 'verbs';
  /** Whether this end can offer verbs to the other. */
  verbs: boolean;
  reason: string;
}

/** Why verbs cannot carry blocks here, or undefined when it can. */
export function verbsUnavailable(): string | undefined {
  const addon = native();
  const probe = addon.probe().ibverbs;
  if (!probe.loaded) return `libibverbs is not loaded: ${probe.reason ?? 'unknown reason'}`;
  // The endpoint's own bring-up (device, port, protection domain, completion and queue pair)
  // names the step that fails.
  const endpoint = addon.verbsProbe({});
  if (!endpoint.available) return endpoint.reason ?? 'no usable RDMA device';
  return undefined;
}

export function chooseTransport(option: TransportOption): TransportChoice {
  if (option !== 'auto' && option !== 'tcp' && option !== 'verbs') {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `transport must be 'auto', 'tcp' or 'verbs', got ${describe(option)}`,
    );
  }
  if (option === 'tcp') return { kind: 'tcp', verbs: false, reason: 'tcp was asked for' };
  const why = verbsUnavailable();
  if (option === 'verbs') {
    if (why !== undefined) {
      throw new KvtierError('KVTIER_NOT_AVAILABLE', `the verbs transport is not available: ${why}`);
    }
    return { kind: 'verbs', verbs: true, reason: 'verbs was asked for' };
  }
  if (why !== undefined) return { kind: 'tcp', verbs: false, reason: `tcp, since ${why}` };
  // Still only this end: the client asks for verbs only when the server's CHALLENGE offers it.
  return { kind: 'verbs', verbs: true, reason: 'verbs: this end has an RDMA device' };
}

/**
 * What differs between the transports once a connection is up, in one object per kind, chosen
 * at the handshake: the client's data path and the server's handlers ask it instead of testing
 * which transport they are on. The code that moves blocks by RDMA lives with each side
 * (client/verbs-path.ts, server/verbs.ts) and is reached only through these answers.
 */
export interface Transport {
  readonly kind: 'tcp' | 'verbs';
  /** The transport's number in AUTH and READY (TransportId). */
  readonly id: number;
  /** The capability bit HELLO and CHALLENGE offer it under. */
  readonly capability: number;
  /** After READY, queue pairs are connected (VERBS_CONNECT, VERBS_READY) before any request. */
  readonly queuePairs: boolean;
  /**
   * Blocks move by RDMA, not in frames: a GET asks with `getFlag` and its answer, like a
   * PUT_OFFER's, carries placements; PUT_DATA carries `putDataFlag` and no payload.
   */
  readonly remote: boolean;
  readonly getFlag: number;
  readonly putDataFlag: number;
  /**
   * Whether a put of these blocks goes in two steps (offer, then the data into the reserved
   * slots). Over verbs always (the client writes into the places offered). Over TCP only for
   * large blocks, and not to a server whose one-step puts land in its store anyway (LANDS).
   */
  twoStepPut(blockBytes: number, serverLands: boolean): boolean;
  /** Why a request frame of this type and flags is refused on this transport, or undefined. */
  refuses(type: number, flags: number): string | undefined;
}

export const TCP: Transport = {
  kind: 'tcp',
  id: TransportId.tcp,
  capability: Capability.TCP,
  queuePairs: false,
  remote: false,
  getFlag: 0,
  putDataFlag: 0,
  twoStepPut: (blockBytes, serverLands) => !serverLands && blockBytes >= PLACED_PUT_MIN_BYTES,
  refuses(type, flags) {
    if (type === MsgType.VERBS_CONNECT || type === MsgType.VERBS_READY) {
      return 'VERBS_CONNECT on a tcp connection';
    }
    if (type === MsgType.RELEASE) return 'RELEASE on a tcp connection';
    if (type === MsgType.GET && (flags & RequestFlag.REMOTE_READ) !== 0) {
      return 'REMOTE_READ on a tcp connection';
    }
    return undefined;
  },
};

export const VERBS: Transport = {
  kind: 'verbs',
  id: TransportId.verbs,
  capability: Capability.VERBS,
  queuePairs: true,
  remote: true,
  getFlag: RequestFlag.REMOTE_READ,
  putDataFlag: RequestFlag.REMOTE_WRITTEN,
  twoStepPut: () => true,
  refuses(type) {
    if (type === MsgType.VERBS_CONNECT || type === MsgType.VERBS_READY) {
      return 'VERBS_CONNECT twice';
    }
    return undefined;
  },
};

/** The transport a number in AUTH or READY names, if this end offers it. */
export function transportOfId(id: number, verbsOffered: boolean): Transport | undefined {
  if (id === TransportId.tcp) return TCP;
  if (id === TransportId.verbs && verbsOffered) return VERBS;
  return undefined;
}
