/**
 * Which transport carries a peer connection's blocks. TCP always works; RDMA verbs needs
 * libibverbs, a device, and a build with the verbs data path. An explicit request for verbs that
 * cannot be met fails with KVTIER_NOT_AVAILABLE; 'auto' reports what it chose and why.
 */
import { KvtierError } from '../errors.js';
import { native } from '../native.js';

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
  return (
    `${endpoint.device ?? 'an RDMA device'} port ${endpoint.port ?? 1} is up, but this build ` +
    'does not yet carry blocks over verbs in the peer protocol'
  );
}

export function chooseTransport(option: TransportOption): TransportChoice {
  if (option !== 'auto' && option !== 'tcp' && option !== 'verbs') {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `transport must be 'auto', 'tcp' or 'verbs', got '${String(option)}'`,
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
  return { kind: 'verbs', verbs: true, reason: 'verbs: both ends have an RDMA device' };
}
