import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';

import { expect } from 'vitest';

import { isKvtierError } from '../lib/core/errors.js';

/** CI installs every prerequisite it can; there a missing one is a failure, not a skip. */
export const inCI = process.env.CI === 'true';

/**
 * Whether a test whose prerequisite may be missing should run. Outside CI a missing prerequisite
 * skips (with the reason printed); in CI it fails, unless it is hardware CI cannot have.
 */
export function prerequisite(
  available: boolean,
  reason: string,
  kind: 'installable' | 'hardware' | 'privilege' = 'installable',
): boolean {
  if (available) return true;
  if (inCI && kind === 'installable') {
    throw new Error(`CI prerequisite missing: ${reason}`);
  }
  console.warn(`skipped: ${reason}`);
  return false;
}

export function tempDir(prefix = 'kvtier-test-'): { path: string; remove(): void } {
  const path = mkdtempSync(join(process.env.KVTIER_TEST_DIR ?? tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

export function randomBytes(n: number): Buffer {
  return randomFillSync(Buffer.allocUnsafe(n));
}

/** Runs f, expects a KVTIER_BAD_ARGUMENT error, and returns its message. */
export function badArgument(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(isKvtierError(e, 'KVTIER_BAD_ARGUMENT'), String(e)).toBe(true);
    return (e as Error).message;
  }
  throw new Error('expected KVTIER_BAD_ARGUMENT, nothing was thrown');
}

/** Polls `check` every 50 ms for up to 20 s; throws naming `what` if it never holds. */
export async function until(what: string, check: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`gave up waiting for ${what}`);
}
