/**
 * A client call's session, hint and request id (docs/policies.md, "Hints through the API"):
 * checked before anything is sent, and encoded as the call section of its requests
 * (docs/protocol.md, "Calls").
 */
import { randomBytes } from 'node:crypto';

import { badArgument } from '../../core/validate.js';
import { checkCallOptions, type CallOptions } from '../../warehouse/calls.js';
import { encodeCall } from '../call-codec.js';

/** In a `u` pattern, surrogates that are halves of a pair are one code point: these are lone. */
const LONE_SURROGATE = /\p{Surrogate}/u;

/** The call fields of `given` (any options object), checked; throws KVTIER_BAD_ARGUMENT. */
export function checkPeerCall(given: CallOptions): CallOptions {
  const o: CallOptions = {
    ...(given.session !== undefined ? { session: given.session } : {}),
    ...(given.hint !== undefined ? { hint: given.hint } : {}),
    ...(given.request !== undefined ? { request: given.request } : {}),
  };
  checkCallOptions(o, false);
  // The wire carries ids as UTF-8, which a lone surrogate has no bytes for.
  for (const field of ['session', 'request'] as const) {
    const v = o[field];
    if (typeof v === 'string' && LONE_SURROGATE.test(v)) {
      throw badArgument(`options.${field}`, 'a string without lone surrogates', v);
    }
  }
  return o;
}

/** Call sections for one client's calls. */
export class CallSections {
  /** Names this client's own request ids apart from every other client's. */
  private readonly prefix = randomBytes(8).toString('hex');
  private serial = 0;

  /**
   * The section of a call with these (checked) fields, or undefined when it names nothing. A call
   * without a request id gets one of its own, so that all of its frames (a batch larger than
   * maxBatch) are one request to the server's policy, as one Warehouse call is.
   */
  section(o: CallOptions): Buffer | undefined {
    if (o.session === undefined && o.hint === undefined && o.request === undefined) {
      return undefined;
    }
    return encodeCall({ ...o, request: o.request ?? `\u0001peer-${this.prefix}-${++this.serial}` });
  }
}
