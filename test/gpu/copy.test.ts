// GPU copy engine and device regions on a real GPU: every byte compared, random data only.
import { randomFillSync } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  createCopyEngine,
  createEngine,
  DeviceRegion,
  GpuCopyEngine,
  isKvtierError,
  Region,
  TransferBatch,
} from '../../lib/index.js';
import { hasGpu } from './gpu.js';

const MiB = 1 << 20;

describe.skipIf(!hasGpu)('GPU copy engine', () => {
  let engine: GpuCopyEngine;
  beforeAll(() => {
    engine = createCopyEngine({ streams: 2 });
  });
  afterAll(() => engine.close());

  async function roundTrip(src: Region | Uint8Array, bytes: number): Promise<Uint8Array> {
    const dev = DeviceRegion.allocate(bytes);
    const back = Region.allocate(bytes, { pin: true });
    await engine
      .submit(new TransferBatch().copy(dev, 0, src, 0, bytes))
      .then((r) => r.throwIfFailed());
    await engine
      .submit(new TransferBatch().copy(back, 0, dev, 0, bytes))
      .then((r) => r.throwIfFailed());
    const out = Uint8Array.from(back.view());
    await Promise.all([dev.close(), back.close()]);
    return out;
  }

  it('moves pinned host memory to the GPU and back unchanged', async () => {
    const src = Region.allocate(8 * MiB, { pin: true });
    expect(src.pinned).toBe(true);
    randomFillSync(src.view());
    expect(Buffer.from(await roundTrip(src, 8 * MiB)).equals(Buffer.from(src.view()))).toBe(true);
    await src.close();
  });

  it('moves unpinned regions and plain JavaScript buffers too', async () => {
    const src = Region.allocate(3 * MiB + 123, { pin: false });
    randomFillSync(src.view());
    expect(Buffer.from(await roundTrip(src, 3 * MiB + 123)).equals(Buffer.from(src.view()))).toBe(
      true,
    );
    await src.close();
    const plain = randomFillSync(new Uint8Array(MiB + 7));
    expect(Buffer.from(await roundTrip(plain, MiB + 7)).equals(Buffer.from(plain))).toBe(true);
  });

  it('runs a batch of many scattered H2D, D2D and D2H copies in one call', async () => {
    const n = 512;
    const piece = 4096 + 64;
    const host = Region.allocate(n * piece, { pin: true });
    randomFillSync(host.view());
    const a = DeviceRegion.allocate(n * piece * 2);
    const b = DeviceRegion.allocate(n * piece);
    const back = Region.allocate(n * piece, { pin: true });
    // Piece i lands at slot (n - 1 - i) * 2 on the GPU: a permutation the data must survive.
    const h2d = new TransferBatch();
    for (let i = 0; i < n; i++) h2d.copy(a, (n - 1 - i) * 2 * piece, host, i * piece, piece);
    const r = await engine.submit(h2d);
    expect(r.ok).toBe(true);
    expect(r.bytes.every((x) => x === piece)).toBe(true);
    const d2d = new TransferBatch();
    for (let i = 0; i < n; i++) d2d.copy(b, i * piece, a, (n - 1 - i) * 2 * piece, piece);
    (await engine.submit(d2d)).throwIfFailed();
    (await engine.submit(new TransferBatch().copy(back, 0, b, 0, n * piece))).throwIfFailed();
    expect(Buffer.from(back.view()).equals(Buffer.from(host.view()))).toBe(true);
    await Promise.all([host.close(), a.close(), b.close(), back.close()]);
  });

  for (const kernel of [true, false]) {
    it(`mixes small H2D, D2D, D2H and H2H copies in one batch (kernel path ${kernel ? 'on' : 'off'})`, async () => {
      const gpu = createCopyEngine({ kernel });
      if (kernel) expect(gpu.kernelPath).toBe('');
      const n = 64;
      const piece = 65536 + 48; // a multiple of 16: the kernel's wide path
      const odd = 1000; // not one: its byte path
      const src = Region.allocate(n * piece, { pin: true });
      randomFillSync(src.view());
      const devA = DeviceRegion.allocate(n * piece);
      const devB = DeviceRegion.allocate(n * piece);
      const out = Region.allocate(2 * n * piece, { pin: true });
      (await gpu.submit(new TransferBatch().copy(devA, 0, src, 0, n * piece))).throwIfFailed();
      const batch = new TransferBatch();
      for (let i = 0; i < n; i++) {
        const len = i % 5 === 0 ? odd : piece;
        const at = i * piece;
        if (i % 4 === 0) batch.copy(devB, at, src, at, len); // H2D
        if (i % 4 === 1) batch.copy(devB, at, devA, at, len); // D2D
        if (i % 4 === 2) batch.copy(out, at, devA, at, len); // D2H
        if (i % 4 === 3) batch.copy(out, at, src, at, len); // H2H
      }
      const r = await gpu.submit(batch);
      expect(r.ok).toBe(true);
      (
        await gpu.submit(new TransferBatch().copy(out, n * piece, devB, 0, n * piece))
      ).throwIfFailed();
      const o = out.view();
      const sv = src.view();
      for (let i = 0; i < n; i++) {
        const len = i % 5 === 0 ? odd : piece;
        const at = i * piece;
        const got =
          i % 4 < 2 ? o.subarray(n * piece + at, n * piece + at + len) : o.subarray(at, at + len);
        expect(Buffer.from(got).equals(Buffer.from(sv.subarray(at, at + len))), `copy ${i}`).toBe(
          true,
        );
      }
      await Promise.all([src.close(), devA.close(), devB.close(), out.close(), gpu.close()]);
    });
  }

  it('keeps several batches in flight across streams', async () => {
    const count = 16;
    const size = MiB;
    const host = Region.allocate(count * size, { pin: true });
    randomFillSync(host.view());
    const dev = DeviceRegion.allocate(count * size);
    const back = Region.allocate(count * size, { pin: true });
    await Promise.all(
      Array.from({ length: count }, (_, i) =>
        engine.submit(new TransferBatch().copy(dev, i * size, host, i * size, size)),
      ),
    );
    await Promise.all(
      Array.from({ length: count }, (_, i) =>
        engine.submit(new TransferBatch().copy(back, i * size, dev, i * size, size)),
      ),
    );
    expect(Buffer.from(back.view()).equals(Buffer.from(host.view()))).toBe(true);
    await Promise.all([host.close(), dev.close(), back.close()]);
  });

  it('wraps a device pointer of this process without owning it', async () => {
    const owner = DeviceRegion.allocate(4 * MiB);
    const view = DeviceRegion.wrap(owner.pointer + 1024n * 1024n, 2 * MiB);
    expect(view.origin).toBe('wrapped');
    const src = randomFillSync(new Uint8Array(2 * MiB));
    (await engine.submit(new TransferBatch().copy(view, 0, src, 0, 2 * MiB))).throwIfFailed();
    const back = new Uint8Array(2 * MiB);
    (await engine.submit(new TransferBatch().copy(back, 0, owner, MiB, 2 * MiB))).throwIfFailed();
    expect(Buffer.from(back).equals(Buffer.from(src))).toBe(true);
    await view.close();
    // The owner is still usable after the wrapper closed: wrapping never frees.
    (await engine.submit(new TransferBatch().copy(back, 0, owner, MiB, 2 * MiB))).throwIfFailed();
    expect(Buffer.from(back).equals(Buffer.from(src))).toBe(true);
    await owner.close();
  });

  it('refuses bad input with coded errors and moves nothing', async () => {
    const dev = DeviceRegion.allocate(MiB);
    const host = Region.allocate(MiB, { pin: true });
    randomFillSync(host.view());
    const before = Buffer.from(host.view());
    // Out of range on the device side: the whole batch is refused.
    const bad = new TransferBatch().copy(host, 0, dev, 0, 4096).copy(host, 0, dev, MiB - 10, 20);
    await expect(engine.submit(bad)).rejects.toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
    expect(Buffer.from(host.view()).equals(before)).toBe(true);
    // Reads, writes and checksums are not copies.
    await expect(engine.submit(new TransferBatch().checksum(host, 0, 16))).rejects.toMatchObject({
      code: 'KVTIER_BAD_ARGUMENT',
    });
    // Host engine threads must never be handed device memory.
    const cpu = createEngine({ kind: 'threads', threads: 1 });
    await expect(cpu.submit(new TransferBatch().copy(host, 0, dev, 0, 16))).rejects.toMatchObject({
      code: 'KVTIER_BAD_ARGUMENT',
    });
    await cpu.close();
    // Wrapping memory that is not device memory, or past its allocation.
    expect(() => DeviceRegion.wrap(0x1000n, 16)).toThrowError(
      expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }),
    );
    expect(() => DeviceRegion.wrap(dev.pointer, 2 * MiB)).toThrowError(
      expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }),
    );
    // More memory than any GPU has.
    try {
      DeviceRegion.allocate(2 ** 52);
      expect.unreachable();
    } catch (e) {
      expect(isKvtierError(e, 'KVTIER_NO_SPACE')).toBe(true);
    }
    // A garbage IPC handle.
    expect(() => DeviceRegion.import(new Uint8Array(64).fill(7))).toThrowError(
      expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }),
    );
    await dev.close();
    expect(() => new TransferBatch().copy(host, 0, dev, 0, 16)).toThrowError(
      expect.objectContaining({ code: 'KVTIER_CLOSED' }),
    );
    await host.close();
  });
});
