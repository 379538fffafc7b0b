import { describe, expect, it } from 'vitest';

import { mkdir } from 'node:fs/promises';

import {
  codeForErrno,
  errnoError,
  fromSystemError,
  isKvtierError,
  KvtierError,
} from '../../lib/core/errors.js';

describe('KvtierError', () => {
  it('carries a stable code, errno, syscall and cause', () => {
    const cause = new Error('beneath');
    const e = new KvtierError('KVTIER_IO', 'failed', { errno: 5, syscall: 'pread', cause });
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('KvtierError');
    expect(e.code).toBe('KVTIER_IO');
    expect(e.errno).toBe(5);
    expect(e.syscall).toBe('pread');
    expect(e.cause).toBe(cause);
    expect(isKvtierError(e, 'KVTIER_IO')).toBe(true);
    expect(isKvtierError(e, 'KVTIER_CLOSED')).toBe(false);
    expect(isKvtierError(new Error('x'))).toBe(false);
  });

  it('maps a full disk, a quota and RLIMIT_FSIZE to KVTIER_NO_SPACE and the rest to KVTIER_IO', () => {
    expect(codeForErrno(28)).toBe('KVTIER_NO_SPACE');
    expect(codeForErrno(122)).toBe('KVTIER_NO_SPACE');
    expect(codeForErrno(27)).toBe('KVTIER_NO_SPACE');
    expect(codeForErrno(5)).toBe('KVTIER_IO');
    const e = errnoError(28, 'pwrite', 'write failed');
    expect(e.message).toBe('write failed: ENOSPC');
    expect(e).toMatchObject({ code: 'KVTIER_NO_SPACE', errno: 28, syscall: 'pwrite' });
  });

  it("codes Node's own system errors the same way, full disk, quota and file size alike", async () => {
    for (const [code, errno] of [
      ['ENOSPC', 28],
      ['EDQUOT', 122],
      ['EFBIG', 27],
    ] as const) {
      // Node reports errno negated.
      const err = Object.assign(new Error(`${code}: x`), { code, errno: -errno, syscall: 'write' });
      expect(fromSystemError(err, 'cannot write f')).toMatchObject({
        code: 'KVTIER_NO_SPACE',
        errno,
        syscall: 'write',
        message: `cannot write f: ${code}: x`,
      });
      // Without an errno, the code names it.
      expect(fromSystemError(Object.assign(new Error(code), { code }), 'w').code).toBe(
        'KVTIER_NO_SPACE',
      );
    }
    const real = await mkdir('/proc/self/kvtier-no').catch((e: unknown) => e);
    expect(fromSystemError(real, 'mkdir')).toMatchObject({ code: 'KVTIER_IO', syscall: 'mkdir' });
    const own = new KvtierError('KVTIER_LOCKED', 'held');
    expect(fromSystemError(own, 'ignored')).toBe(own);
  });
});
