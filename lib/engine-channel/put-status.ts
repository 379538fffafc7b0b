/**
 * Per-key outcome of a save. The Warehouse's PutResult carries `status` (one per key) where it
 * has it; a Warehouse that reports only counts is read through what was held before and after
 * the put: held before is 'present', held after is 'stored', anything else found no room.
 */
import type { PutResult } from '../warehouse/warehouse.js';

export type SaveStatus = 'stored' | 'present' | 'busy' | 'no-space' | 'io-error';

const STATUSES: ReadonlySet<string> = new Set([
  'stored',
  'present',
  'busy',
  'no-space',
  'io-error',
]);

/** The per-key statuses of a put of `n` keys, when the Warehouse gave them. */
export function statusesOf(result: PutResult, n: number): SaveStatus[] | undefined {
  const status = (result as { status?: unknown }).status;
  if (!Array.isArray(status) || status.length !== n) return undefined;
  return status.every((s) => typeof s === 'string' && STATUSES.has(s))
    ? (status as SaveStatus[])
    : undefined;
}

/** Statuses from what was held before the put and after it. */
export function statusesFromPresence(
  before: readonly boolean[],
  after: readonly boolean[],
): SaveStatus[] {
  return before.map((b, i) => (b ? 'present' : after[i] ? 'stored' : 'busy'));
}
