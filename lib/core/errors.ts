import { constants } from 'node:os';

/**
 * The one error class kvtier throws. `code` is stable and safe to branch on; the message is for
 * people and may change.
 */
export const ErrorCodes = [
  'KVTIER_BAD_ARGUMENT',
  'KVTIER_NOT_AVAILABLE',
  'KVTIER_IO',
  'KVTIER_NO_SPACE',
  'KVTIER_CORRUPT',
  'KVTIER_ABORTED',
  'KVTIER_PEER',
  'KVTIER_AUTH',
  'KVTIER_CLOSED',
  'KVTIER_LOCKED',
  'KVTIER_PROTOCOL',
  'KVTIER_TIMEOUT',
  // The cluster index (TS only: the native side never meets Redis).
  'KVTIER_REDIS',
  'KVTIER_CONFLICT',
  // Tenancy: a tenant name the warehouse was not opened with.
  'KVTIER_UNKNOWN_TENANT',
] as const;

export type ErrorCode = (typeof ErrorCodes)[number];

export interface KvtierErrorOptions {
  /** The OS error number, when a system call failed. */
  errno?: number;
  /** The system call that failed. */
  syscall?: string;
  /** The error beneath this one. */
  cause?: unknown;
}

export class KvtierError extends Error {
  readonly code: ErrorCode;
  readonly errno?: number;
  readonly syscall?: string;

  constructor(code: ErrorCode, message: string, options: KvtierErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'KvtierError';
    this.code = code;
    if (options.errno !== undefined) this.errno = options.errno;
    if (options.syscall !== undefined) this.syscall = options.syscall;
  }
}

export function isKvtierError(e: unknown, code?: ErrorCode): e is KvtierError {
  return e instanceof KvtierError && (code === undefined || e.code === code);
}

/** errno values kvtier treats specially (Linux numbering). */
const ENOSPC = 28;
const EDQUOT = 122;
const EFBIG = 27;

/** The code an I/O failure with this errno carries: a full disk is not a broken one. */
export function codeForErrno(errno: number): ErrorCode {
  return errno === ENOSPC || errno === EDQUOT || errno === EFBIG ? 'KVTIER_NO_SPACE' : 'KVTIER_IO';
}

/**
 * The error for a failed Node.js system call (an ErrnoException from node:fs), coded as the addon
 * codes its own (codeForErrno): every layer tells a full disk from a broken one the same way.
 */
export function fromSystemError(e: unknown, what: string): KvtierError {
  if (e instanceof KvtierError) return e;
  const err = (typeof e === 'object' && e !== null ? e : {}) as NodeJS.ErrnoException;
  const errno =
    typeof err.errno === 'number'
      ? Math.abs(err.errno) // Node reports -errno
      : typeof err.code === 'string'
        ? (constants.errno as Record<string, number | undefined>)[err.code]
        : undefined;
  const message = typeof err.message === 'string' ? err.message : String(e);
  return new KvtierError(
    errno === undefined ? 'KVTIER_IO' : codeForErrno(errno),
    `${what}: ${message}`,
    {
      ...(errno !== undefined ? { errno } : {}),
      ...(typeof err.syscall === 'string' ? { syscall: err.syscall } : {}),
      cause: e,
    },
  );
}

/** Builds the error for a failed system call, with the OS's own name for the errno. */
export function errnoError(errno: number, syscall: string, what: string): KvtierError {
  return new KvtierError(codeForErrno(errno), `${what}: ${errnoName(errno)}`, { errno, syscall });
}

const errnoNames = new Map<number, string>(
  Object.entries(constants.errno).map(([name, value]) => [value, name]),
);

export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

/** An AbortSignal's rejection, as the platform spells it. */
export function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof Error && reason.name === 'AbortError') return reason;
  const err = new KvtierError('KVTIER_ABORTED', 'the operation was aborted', { cause: reason });
  err.name = 'AbortError';
  return err;
}
