/**
 * Byte views of host memory targets: one helper for every place that needs to read or copy a
 * block in JavaScript (checksums, copies between places of one batch).
 */
import { DeviceRegion } from './gpu/device-region.js';
import { KvtierError } from './errors.js';
import { Region } from './region.js';
import type { Target } from './engine.js';

/** The bytes [offset, offset + length) of a host target, as a view (no copy). */
export function hostBytes(t: Target, offset: number, length: number): Uint8Array {
  if (t instanceof Region) return t.view(offset, length);
  if (t instanceof DeviceRegion) throw new KvtierError('KVTIER_BAD_ARGUMENT', 'not host memory');
  if (ArrayBuffer.isView(t)) return new Uint8Array(t.buffer, t.byteOffset + offset, length);
  return new Uint8Array(t, offset, length);
}

/**
 * Refuses GPU memory where only host memory will do (blocks are checksummed on the host side of
 * every transfer; engines' GPU blocks reach kvtier through a gather into a pinned Region).
 */
export function requireHostMemory(t: Target, what: string): void {
  if (t instanceof DeviceRegion) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${what} must be host memory (a Region or a buffer); gather GPU blocks into a pinned Region first`,
    );
  }
}
