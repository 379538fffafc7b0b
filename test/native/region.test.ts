import { constants } from 'node:buffer';
import { randomFillSync } from 'node:crypto';

import { describe, expect, it } from 'vitest';

import { createEngine, KvtierError, Region, TransferBatch } from '../../lib/index.js';
import { probe } from '../../lib/core/probe.js';

describe('Region', () => {
  it('allocates zeroed, page-aligned memory shared with JavaScript without copies', async () => {
    const region = Region.allocate(3 * 4096 + 1);
    expect(region.byteLength).toBe(3 * 4096 + 1);
    const all = region.view();
    expect(all.every((b) => b === 0)).toBe(true);
    all[5] = 42;
    // A second view sees the write: both are the same native memory.
    expect(region.view(5, 1)[0]).toBe(42);
    expect(new Uint8Array(region.buffer)[5]).toBe(42);
    await region.close();
  });

  it('reports pinning honestly', async () => {
    const cuda = probe().cuda;
    const region = Region.allocate(4096);
    if (cuda.available) {
      expect(region.pinned).toBe(true);
    } else {
      expect(region.pinned).toBe(false);
      expect(region.pinReason).not.toBe('');
    }
    await region.close();
    const unpinned = Region.allocate(4096, { pin: false });
    expect(unpinned.pinned).toBe(false);
    expect(unpinned.pinReason).toBe('');
    await unpinned.close();
  });

  it('refuses pin: true without a CUDA device', () => {
    if (probe().cuda.available) return;
    expect(() => Region.allocate(4096, { pin: true })).toThrow(
      expect.objectContaining({ code: 'KVTIER_NOT_AVAILABLE' }),
    );
  });

  it.each([0, -1, 1.5, Number.NaN, Infinity, 2 ** 60, '4096' as unknown as number])(
    'rejects size %s with KVTIER_BAD_ARGUMENT',
    (size) => {
      let error: unknown;
      try {
        Region.allocate(size);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(KvtierError);
      expect((error as KvtierError).code).toMatch(/KVTIER_BAD_ARGUMENT|KVTIER_NO_SPACE/);
      if (size !== 2 ** 60) expect((error as KvtierError).code).toBe('KVTIER_BAD_ARGUMENT');
    },
  );

  it('rejects views outside the region', async () => {
    const region = Region.allocate(4096);
    expect(() => region.view(4000, 200)).toThrow(expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }));
    expect(() => region.view(-1, 1)).toThrow(expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }));
    await region.close();
  });

  it('serves regions larger than the largest ArrayBuffer through views of their parts', async () => {
    // Virtual memory only: pages are touched just where the test writes.
    const big = Region.allocate(constants.MAX_LENGTH + 3 * 4096, { pin: false });
    expect(() => big.buffer).toThrowError(expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }));
    const at = constants.MAX_LENGTH + 4096;
    const view = big.view(at, 8192);
    randomFillSync(view);
    const expected = Buffer.from(view);
    // A copy through the engine, addressed by the view: it lands in the region at `at`.
    const engine = createEngine({ kind: 'threads', threads: 1 });
    const out = new Uint8Array(8192);
    (await engine.submit(new TransferBatch().copy(out, 0, view, 0, 8192))).throwIfFailed();
    expect(Buffer.from(out).equals(expected)).toBe(true);
    (await engine.submit(new TransferBatch().copy(big, 0, big.view(at, 4096), 0, 4096))).throwIfFailed();
    expect(Buffer.from(big.view(0, 4096)).equals(expected.subarray(0, 4096))).toBe(true);
    await engine.close();
    await big.close();
    expect(view.byteLength).toBe(0);
  });

  it('detaches every view on close, so freed memory is unreachable', async () => {
    const region = Region.allocate(8192);
    const view = region.view(0, 100);
    const buffer = region.buffer;
    await region.close();
    expect(region.closed).toBe(true);
    expect(view.byteLength).toBe(0);
    expect(buffer.byteLength).toBe(0);
    expect(() => region.view()).toThrow(expect.objectContaining({ code: 'KVTIER_CLOSED' }));
    // Closing twice is harmless.
    await region.close();
  });
});
