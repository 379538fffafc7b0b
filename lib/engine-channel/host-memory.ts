/**
 * Host pools: an engine's memfd (or shared-memory file), opened through /proc/<peer pid>/fd/<n>
 * and mapped shared. Node's sockets drop SCM_RIGHTS, so /proc stands in for descriptor passing;
 * the pid is the kernel's (SO_PEERCRED), so an engine can only name its own descriptors.
 */
import { KvtierError, isKvtierError } from '../core/errors.js';
import { Region } from '../core/region.js';
import type { PoolMemory } from './pools.js';

export interface MemfdSpec {
  kind: 'memfd';
  fd: number;
  bytes: number;
}

function bad(message: string, cause?: unknown): never {
  throw new KvtierError('KVTIER_BAD_ARGUMENT', message, cause === undefined ? {} : { cause });
}

export function checkMemfd(memory: Record<string, unknown>): MemfdSpec {
  const { fd, bytes } = memory;
  if (typeof fd !== 'number' || !Number.isSafeInteger(fd) || fd < 0 || fd > 0x7fffffff) {
    bad(`memory.fd must be a file descriptor number, got ${JSON.stringify(fd)}`);
  }
  if (typeof bytes !== 'number' || !Number.isSafeInteger(bytes) || bytes <= 0) {
    bad(`memory.bytes must be a positive integer, got ${JSON.stringify(bytes)}`);
  }
  return { kind: 'memfd', fd, bytes };
}

/** Maps the peer's descriptor; a descriptor that is closed or not mappable is bad input. */
export function openHostMemory(pid: number, spec: MemfdSpec): PoolMemory {
  const path = `/proc/${pid}/fd/${spec.fd}`;
  let region: Region;
  try {
    region = Region.mapShared(path, spec.bytes);
  } catch (e) {
    if (isKvtierError(e) && (e.code === 'KVTIER_IO' || e.code === 'KVTIER_BAD_ARGUMENT')) {
      bad(`fd ${spec.fd} of the engine (pid ${pid}) cannot be mapped: ${e.message}`, e);
    }
    throw e;
  }
  return {
    kind: 'memfd',
    target: region,
    identities: [`file:${region.fileId ?? path}`],
    close: () => region.close(),
  };
}
