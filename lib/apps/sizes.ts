/**
 * Byte counts as the applications' options spell them (`256KiB`, `4MiB`, `1GiB`): parsed for the
 * CLI's options and formatted back for option defaults and benchmark reports.
 */
import { KvtierError } from '../index.js';

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 2 ** 10,
  kb: 2 ** 10,
  kib: 2 ** 10,
  m: 2 ** 20,
  mb: 2 ** 20,
  mib: 2 ** 20,
  g: 2 ** 30,
  gb: 2 ** 30,
  gib: 2 ** 30,
  t: 2 ** 40,
  tb: 2 ** 40,
  tib: 2 ** 40,
};

/**
 * Parses a byte count such as `1GiB`, `256KiB`, `4MiB`, `1G`, `1.5M` or `1048576`. Units are binary
 * (K = 1024) whether or not they carry the `i`, as fio and dd read them. The result must be a
 * whole, non-negative, safe integer; `what` names the option in the error.
 */
export function parseSize(text: string | number, what = 'size'): number {
  if (typeof text === 'number') {
    if (!Number.isSafeInteger(text) || text < 0) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `${what} must be a whole number of bytes, got ${text}`,
      );
    }
    return text;
  }
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$/.exec(String(text));
  const unit = m ? UNITS[(m[2] ?? '').toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${what} must be a byte count such as 1048576, 256KiB, 4MiB or 1GiB, got '${text}'`,
    );
  }
  const value = Number(m[1]) * unit;
  if (!Number.isSafeInteger(value)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${what} must come to a whole number of bytes, got '${text}' (${value})`,
    );
  }
  return value;
}

/** Parses a comma-separated list of sizes (`256KiB,1MiB,4MiB`). */
/** A whole number of at least `min` from the command line; KVTIER_BAD_ARGUMENT otherwise. */
export function parseCount(text: string, what: string, min = 0): number {
  if (!/^\s*\d+\s*$/.test(text) || Number(text) < min) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${what} must be an integer >= ${min}, got '${text}'`,
    );
  }
  return Number(text);
}

export function parseSizeList(text: string, what = 'size'): number[] {
  const parts = text.split(',').map((s) => s.trim());
  if (parts.some((p) => p.length === 0)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${what} must be a comma-separated list of sizes, got '${text}'`,
    );
  }
  return parts.map((p) => parseSize(p, what));
}

/** Formats a byte count with the largest binary unit that divides it (1048576 → `1MiB`). */
export function formatSize(bytes: number): string {
  for (const [unit, scale] of [
    ['TiB', 2 ** 40],
    ['GiB', 2 ** 30],
    ['MiB', 2 ** 20],
    ['KiB', 2 ** 10],
  ] as const) {
    if (bytes >= scale && bytes % scale === 0) return `${bytes / scale}${unit}`;
  }
  return `${bytes}B`;
}

/** An amount of bytes for reading, rounded to one decimal in the largest unit: "1.5 GiB". */
export function formatBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${u[i]}`;
}
