import { probe } from '../lib/core/probe.js';
import type { EngineKind } from '../lib/core/engine.js';
import { prerequisite } from './helpers.js';

/** The engines this machine can run; io_uring must be compiled in CI (liburing-dev is installed
 * there) but may be forbidden by the kernel, which is not something CI can install. */
export function engineKinds(): EngineKind[] {
  const uring = probe().ioUring;
  const kinds: EngineKind[] = ['threads'];
  if (
    prerequisite(uring.compiled === true, 'kvtier was built without liburing (liburing-dev)') &&
    prerequisite(uring.available, `io_uring is not usable here: ${uring.reason}`, 'privilege')
  ) {
    kinds.unshift('io_uring');
  }
  return kinds;
}
