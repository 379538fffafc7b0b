/** What the server keeps per connection, and per put offer waiting for its data. */
import type { NativeTarget } from '../../core/native.js';
import type { Region } from '../../core/region.js';
import type { Key } from '../../keys/keys.js';
import type { Reservation } from '../../warehouse/warehouse.js';
import type { CallOptions } from '../../warehouse/calls.js';
import { TCP, type Transport } from '../transports.js';
import type { PeerStore } from './store.js';

export interface ConnState {
  id: number;
  remote: string;
  /** 'verbs': authenticated, waiting for VERBS_CONNECT before any request. */
  phase: 'hello' | 'auth' | 'verbs' | 'ready' | 'closed';
  /** Chosen in AUTH; TCP until then. */
  transport: Transport;
  /**
   * What this connection's requests are served from (set in AUTH): the warehouse, or the view of
   * the tenant it authenticated as. Undefined until then, and for an operator (STATS only).
   */
  store?: PeerStore;
  /** The tenant it authenticated as, on a server with tenants. */
  tenant?: string;
  /** Authenticated with the operator's token on a server with tenants: statistics only. */
  operator?: boolean;
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

export function newConn(id: number, remote: string): ConnState {
  return {
    id,
    remote,
    phase: 'hello',
    transport: TCP,
    sending: new Map(),
    offers: new Map(),
    offering: new Set(),
    queued: 0,
    answered: new Map(),
    leases: new Map(),
  };
}

/** A block a GET answers with: where it lies and its CRC-32C. */
export interface SentBlock {
  target: NativeTarget;
  offset: number;
  checksum: number;
}

export interface Offer {
  keys: Key[];
  statuses: number[];
  /** Slots the data is placed into; undefined when it lands in a receive buffer instead. */
  reservation: Reservation | undefined;
  timer: NodeJS.Timeout;
  /** The connection's transport when the offer was made: how its data comes. */
  transport: Transport;
  /** Verbs without a reservation: the registered region the client writes into. */
  receive?: Region;
  /** The offer carried RequestFlag.DURABLE: PUT_RESULT waits for the file tier's sync. */
  durable: boolean;
  /** The offer's call section (RequestFlag.CALL), for a put made when its data comes. */
  call: CallOptions;
}
