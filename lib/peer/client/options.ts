/** The options of connect(), checked once, and the one place callers build them from a token. */
import { KvtierError } from '../../core/errors.js';
import {
  badArgument,
  finite,
  guard,
  integer,
  options as readOptions,
  string,
} from '../../core/validate.js';
import { checkSecret, readTokenFile, TENANT_NAME, type Secret } from '../auth.js';
import type { TransportOption } from '../transports.js';
import type { CallOptions } from '../../warehouse/calls.js';

export interface ConnectOptions {
  /** The shared secret, or */
  token?: string | Buffer;
  /** a file holding it. */
  tokenFile?: string;
  /**
   * The tenant this client is, on a server with tenants (`serve --tenants`): the token is that
   * tenant's, and every key is then in its namespace on the server. Absent on such a server: the
   * token is the operator's, which may only read statistics (tenantStats()).
   */
  tenant?: string;
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

/**
 * A put's options; its session, hint and request id reach the server's eviction policy
 * (PeerCallOptions).
 */
export interface PeerPutOptions extends CallOptions {
  /**
   * Resolve only once every block reported stored or present is in the server's file tier with
   * its header written and synced, so that a crash of the server loses none of them
   * (RequestFlag.DURABLE). Rejects with KVTIER_NOT_AVAILABLE when the server cannot (no file
   * tier, or an older server). Default: the connect() option `durable`, else false.
   */
  durable?: boolean;
}

/** Where a caller's secret comes from: a token, or a file holding one (neither: connect refuses). */
export interface SecretSource {
  token?: string | Buffer | undefined;
  tokenFile?: string | undefined;
}

/**
 * connect()'s options for a caller that keeps its secret as an optional token and token file
 * (a peer tier, a cluster's peer pool): absent fields stay absent, not undefined.
 */
export function connectOptions(
  from: SecretSource,
  rest: Omit<ConnectOptions, 'token' | 'tokenFile'>,
): ConnectOptions {
  return {
    ...(from.token !== undefined ? { token: from.token } : {}),
    ...(from.tokenFile !== undefined ? { tokenFile: from.tokenFile } : {}),
    ...rest,
  };
}

export function checkConnectOptions(given: unknown): ConnectOptions {
  const o = readOptions<ConnectOptions>(given, 'options', [
    'token',
    'tokenFile',
    'tenant',
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
  if (o.tenant !== undefined && !TENANT_NAME.test(string(o.tenant, 'options.tenant'))) {
    throw badArgument('options.tenant', '1 to 64 of A-Z a-z 0-9 . _ -', o.tenant);
  }
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

/** The secret the options name; refuses options that name none. */
export async function secretOf(options: ConnectOptions): Promise<Secret> {
  if (options.token !== undefined) return checkSecret(options.token, 'the token');
  if (options.tokenFile !== undefined) return readTokenFile(options.tokenFile);
  throw new KvtierError('KVTIER_BAD_ARGUMENT', 'connect() needs a token or a tokenFile');
}
