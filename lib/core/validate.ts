/**
 * Argument checks for the public boundary. Every public function checks what it was given with
 * these before it touches any state, so a bad call throws KVTIER_BAD_ARGUMENT naming the argument
 * and never a bare TypeError from deep inside (null options, symbols, bigints, proxies whose traps
 * throw). Options are read once, into a plain object, so a getter cannot change its answer between
 * the check and the use.
 */
import { KvtierError } from './errors.js';

/** A short description of any value for an error message; never throws, never runs user code. */
export function describe(value: unknown): string {
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
    case 'number':
    case 'boolean':
    case 'undefined':
      return String(value);
    case 'bigint':
      return `${value}n`;
    case 'symbol':
      return 'a symbol';
    case 'function':
      return 'a function';
    default:
      if (value === null) return 'null';
      // Array.isArray throws for a revoked proxy; reading a constructor could run a proxy's trap.
      try {
        return Array.isArray(value) ? 'an array' : 'an object';
      } catch {
        return 'an object';
      }
  }
}

export function badArgument(name: string, expected: string, value: unknown): KvtierError {
  return new KvtierError(
    'KVTIER_BAD_ARGUMENT',
    `${name} must be ${expected}, got ${describe(value)}`,
  );
}

/**
 * Runs `read`, which reads something the caller gave (a property, an element), and turns any
 * failure that is not already a KvtierError (a throwing getter or proxy trap) into
 * KVTIER_BAD_ARGUMENT naming `name`.
 */
export function guard<T>(name: string, read: () => T): T {
  try {
    return read();
  } catch (e) {
    if (e instanceof KvtierError) throw e;
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `${name} could not be read`, { cause: e });
  }
}

/**
 * An options argument: undefined is `{}`; anything else must be an object. Returns a fresh plain
 * object: the caller's own fields copied, and each of `fields` read once (own or inherited), so
 * the checks that follow see what the code after them uses. Fields that are undefined are left
 * out; fields not named are kept as they are (an option added later is not dropped).
 */
export function options<T extends object>(
  value: unknown,
  name: string,
  fields: readonly (keyof T & string)[],
): Partial<T> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object') throw badArgument(name, 'an object', value);
  const out: Record<string, unknown> = guard(name, () => ({ ...value }));
  for (const field of fields) {
    const v = guard(`${name}.${field}`, () => (value as Record<string, unknown>)[field]);
    if (v !== undefined) out[field] = v;
    else delete out[field];
  }
  return out as Partial<T>;
}

export interface IntegerRange {
  min?: number;
  max?: number;
}

/** A safe integer in [min, max] (default: non-negative). */
export function integer(value: unknown, name: string, range: IntegerRange = {}): number {
  const min = range.min ?? 0;
  const max = range.max ?? Number.MAX_SAFE_INTEGER;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    const bounds =
      max === Number.MAX_SAFE_INTEGER
        ? `an integer of at least ${min}`
        : `an integer in [${min}, ${max}]`;
    throw badArgument(name, bounds, value);
  }
  return value;
}

/** A finite number in [min, max] (default: any finite number). */
export function finite(value: unknown, name: string, range: IntegerRange = {}): number {
  const min = range.min ?? -Number.MAX_VALUE;
  const max = range.max ?? Number.MAX_VALUE;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw badArgument(name, `a finite number in [${min}, ${max}]`, value);
  }
  return value;
}

export function boolean(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') throw badArgument(name, 'true or false', value);
  return value;
}

export function string(value: unknown, name: string): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw badArgument(name, 'a non-empty string', value);
  }
  return value;
}

export function oneOf<T extends string | boolean>(
  value: unknown,
  name: string,
  allowed: readonly T[],
): T {
  if (!allowed.includes(value as T)) {
    const list = allowed.map((a) => (typeof a === 'string' ? `'${a}'` : String(a))).join(', ');
    throw badArgument(name, `one of ${list}`, value);
  }
  return value as T;
}

export function func<F extends (...args: never[]) => unknown>(value: unknown, name: string): F {
  if (typeof value !== 'function') throw badArgument(name, 'a function', value);
  return value as F;
}

export function instance<T>(value: unknown, name: string, ctor: { prototype: T }, what: string): T {
  // A class with a private constructor is no `new`-able type, hence the cast.
  const cls = ctor as unknown as new () => unknown;
  // instanceof walks the prototype chain, which a proxy's trap may refuse to show.
  if (!guard(name, () => value instanceof cls)) throw badArgument(name, what, value);
  return value as T;
}

/** An optional AbortSignal. */
export function signal(value: unknown, name: string): AbortSignal | undefined {
  if (value === undefined) return undefined;
  return instance(value, name, AbortSignal, 'an AbortSignal');
}
