/**
 * Which transport carries a peer connection's blocks. TCP always works; RDMA verbs needs
 * libibverbs and a device whose port is up and can make a queue pair. An explicit request for verbs that
 * cannot be met fails with KVTIER_NOT_AVAILABLE; 'auto' reports what it chose and why.
 */
import { KvtierError } from '../core/errors.js';
import { describe } from '../core/validate.js';
import { native } from '../core/native.js';

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
