/**
 * What the policies learn about the call behind each access (AccessInfo.request, session, hint):
 * the engine's session id and hint, checked, and a request number per call. Session ids (and
 * request ids) are mapped to numbers in bounded maps that drop the least recently used id, so an
 * engine that never ends its sessions cannot grow the warehouse; numbers are never reused, so a
 * dropped id that comes back is a new conversation to the policy, never another one's.
 */
import { badArgument, oneOf, options as readOptions } from '../core/validate.js';

/** An engine's session or request id: a string of 1 to 256 characters, or a safe integer. */
export type CallId = string | number;

/** The hint values (docs/policies.md, "Hints through the API"). */
export const HINTS = ['soon', 'closed'] as const;
export type Hint = (typeof HINTS)[number];

/** The options every data call accepts about the request it belongs to. */
export interface CallOptions {
  /** The engine's conversation id; scoped to the tenant on a TenantView. */
  session?: CallId;
  /** What the engine knows of the conversation after this request. */
  hint?: Hint;
  /**
   * The engine's request id: calls that name the same one (the get of a request's cached prefix
   * and the put of what it computed) count as one request to the policy. Absent: each call is a
   * request of its own.
   */
  request?: CallId;
}

/** What placement passes into each AccessInfo of a call. */
export interface CallContext {
  request: number;
  session?: number;
  hint?: Hint;
}

/** Ids at most this long; a TenantView's scoped ids add the tenant name to the caller's. */
const MAX_ID = 256;
const MAX_SCOPED_ID = MAX_ID + 96;

/**
 * Checks the call fields of an options object already read (readOptions); returns it. Only the
 * warehouse itself takes the longer ids a TenantView scopes (`scoped`).
 */
export function checkCallOptions<T extends CallOptions>(o: T, scoped = true): T {
  for (const field of ['session', 'request'] as const) {
    const v: unknown = o[field];
    if (v === undefined) continue;
    const ok =
      typeof v === 'string'
        ? v.length > 0 && v.length <= (scoped && v.startsWith('\u0000') ? MAX_SCOPED_ID : MAX_ID)
        : typeof v === 'number' && Number.isSafeInteger(v);
    if (!ok) {
      throw badArgument(
        `options.${field}`,
        `a string of 1 to ${MAX_ID} characters or an integer`,
        v,
      );
    }
  }
  if (o.hint !== undefined) oneOf(o.hint, 'options.hint', HINTS);
  return o;
}

/**
 * The options `o` (any object; its call fields are checked) with their ids scoped to a tenant:
 * two tenants' "s1" are different sessions, and a tenant cannot name another's.
 */
export function scopeCall<T extends CallOptions>(o: T, tenant: string): T {
  checkCallOptions(
    readOptions<CallOptions>(o, 'options', ['session', 'hint', 'request']) as CallOptions,
    false,
  );
  const scope = (v: CallId): string => `\u0000${tenant}\u0000${typeof v}:${v}`;
  return {
    ...o,
    ...(o.session !== undefined ? { session: scope(o.session) } : {}),
    ...(o.request !== undefined ? { request: scope(o.request) } : {}),
  };
}

/** An id → number map that forgets the least recently used id past `limit`. */
class IdNumbers {
  private readonly map = new Map<string, number>();
  constructor(private readonly limit: number) {}

  number(id: CallId, fresh: () => number): number {
    const key = `${typeof id}:${id}`;
    let n = this.map.get(key);
    if (n !== undefined) this.map.delete(key);
    else n = fresh();
    this.map.set(key, n);
    if (this.map.size > this.limit) this.map.delete(this.map.keys().next().value!);
    return n;
  }

  get size(): number {
    return this.map.size;
  }
}

/** Session and request numbers for the calls of one warehouse. */
export class CallNumbers {
  private nextRequest = 0;
  private nextSession = 0;
  private readonly sessions: IdNumbers;
  private readonly requests: IdNumbers;

  constructor(limit = 1 << 16) {
    this.sessions = new IdNumbers(limit);
    this.requests = new IdNumbers(limit);
  }

  /** Sessions remembered now (at most the limit). */
  get sessionCount(): number {
    return this.sessions.size;
  }

  /** The context of one call (its options already checked). */
  next(o: CallOptions = {}): CallContext {
    const request =
      o.request === undefined
        ? this.nextRequest++
        : this.requests.number(o.request, () => this.nextRequest++);
    const c: CallContext = { request };
    if (o.session !== undefined)
      c.session = this.sessions.number(o.session, () => this.nextSession++);
    if (o.hint !== undefined) c.hint = o.hint;
    return c;
  }
}
