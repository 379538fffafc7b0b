/** What a PeerServer is started with, and the check of its types. */
import { badArgument, finite, func, guard, integer, string } from '../../core/validate.js';
import type { Warehouse } from '../../warehouse/warehouse.js';
import type { Secret } from '../auth.js';
import type { TransportOption } from '../transports.js';
import type { PeerStore } from './store.js';

export type LogFn = (event: string, fields?: Record<string, unknown>) => void;

/**
 * A server's tenants (docs/tenants.md). Each connection names one in AUTH and proves it holds that
 * tenant's token; its requests then go to the tenant's view of the warehouse, where keys are mapped
 * to the tenant's namespace on this side. A connection naming none proves it holds the operator's
 * token (PeerServerOptions.secret) and may only ask for statistics (STATS).
 */
export interface ServerTenancy {
  /** Each tenant's token, by name. */
  tokens: ReadonlyMap<string, Secret>;
  /** The tenant's view of the warehouse (warehouse.tenant(name)). */
  view(name: string): PeerStore;
  /** What an operator's STATS is answered with: JSON-serialisable. */
  stats(): unknown;
}

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
  /** Serve tenants; `secret` is then the operator's token. */
  tenants?: ServerTenancy;
  log?: LogFn;
}

/**
 * Checks the types of a server's options (reading each inside a guard, so a throwing getter is a
 * bad argument); the object itself is used as given.
 */
export function checkServerOptions(options: unknown): void {
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
  const tenants = read('tenants');
  if (tenants !== undefined) {
    const t = tenants as Partial<ServerTenancy>;
    if (
      typeof t !== 'object' ||
      t === null ||
      !(t.tokens instanceof Map) ||
      typeof t.view !== 'function' ||
      typeof t.stats !== 'function'
    ) {
      throw badArgument('options.tenants', 'tokens (a Map), view() and stats()', tenants);
    }
  }
  const log = read('log');
  if (log !== undefined) func(log, 'options.log');
}
