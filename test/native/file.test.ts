import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { openFile } from '../../lib/index.js';
import { tempDir } from '../helpers.js';

const dir = tempDir();
afterAll(() => dir.remove());

describe('openFile', () => {
  it('creates and preallocates a file with O_DIRECT by default', async () => {
    const path = join(dir.path, 'a.bin');
    const file = await openFile(path, { create: true, size: 1 << 20 });
    expect(file.direct).toBe(true);
    expect(file.offsetAlign).toBeGreaterThan(0);
    expect(file.size()).toBe(1 << 20);
    expect(statSync(path).blocks * 512).toBeGreaterThanOrEqual(1 << 20);
    await file.close();
    expect(file.closed).toBe(true);
    expect(() => file.size()).toThrow(expect.objectContaining({ code: 'KVTIER_CLOSED' }));
  });

  it('reports a missing file with errno and syscall', async () => {
    const error = await openFile(join(dir.path, 'missing.bin')).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'KVTIER_IO', errno: 2, syscall: 'open' });
  });

  it.each([
    [{ size: -1 }],
    [{ size: 1.5 }],
    [{ size: Number.NaN }],
    [{ direct: 'yes' as unknown as boolean }],
    [{ readOnly: true, create: true }],
  ])('rejects bad options %j and creates nothing', async (options) => {
    const path = join(dir.path, `bad-${Math.random()}.bin`);
    const error = await openFile(path, { create: true, ...options }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
    expect(existsSync(path)).toBe(false);
  });

  it('opens buffered when asked', async () => {
    const file = await openFile(join(dir.path, 'b.bin'), { create: true, direct: false });
    expect(file.direct).toBe(false);
    expect(file.offsetAlign).toBe(1);
    await file.close();
  });
});
