// Engine KV layouts gathered out of GPU memory and scattered back, and files read straight into
// GPU memory through cuFile and through the POSIX bounce path: every byte compared.
import { randomFillSync } from 'node:crypto';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import {
  createCopyEngine,
  createEngine,
  createGpuFileEngine,
  DeviceRegion,
  gatherBlocks,
  openFile,
  Region,
  scatterBlocks,
  TransferBatch,
  describeKvLayout,
  type GpuFileIo,
} from '../../lib/index.js';
import { prerequisite, tempDir } from '../helpers.js';
import { cufileReason, hasGpu } from './gpu.js';

const MiB = 1 << 20;
const dir = tempDir('kvtier-gpu-');
afterAll(() => dir.remove());

describe.skipIf(!hasGpu)('KV layouts on the GPU', () => {
  it.each([true, false])(
    'gathers vLLM-style blocks to pinned memory and scatters them back, as the CPU does (kernel %s)',
    async (kernel) => {
      const L = 4;
      const B = 24;
      const layerBytes = 2 * B * 16 * 8 * 128 * 2;
      const layout = describeKvLayout({
        form: 'kv-first',
        numLayers: L,
        numBlocks: B,
        blockTokens: 16,
        kvHeads: 8,
        headDim: 128,
        dtype: 'bf16',
        // Layers apart from each other with a gap, as separate allocations would be.
        layers: Array.from({ length: L }, (_, l) => ({ offset: l * (layerBytes + 65536) })),
      });
      const poolBytes = layout.extent;
      const hostPool = Region.allocate(poolBytes, { pin: true });
      randomFillSync(hostPool.view());
      const gpu = createCopyEngine({ kernel });
      const cpu = createEngine({ kind: 'threads', threads: 2 });
      const pool = DeviceRegion.allocate(poolBytes);
      (await gpu.submit(new TransferBatch().copy(pool, 0, hostPool, 0, poolBytes))).throwIfFailed();

      const blocks = [5, 0, 23, 7, 7, 12];
      const packed = Region.allocate(blocks.length * layout.blockBytes, { pin: true });
      const expected = Region.allocate(blocks.length * layout.blockBytes);
      const r = await gatherBlocks(gpu, pool, layout, blocks, packed);
      expect(r.bytes).toBe(blocks.length * layout.blockBytes);
      await gatherBlocks(cpu, hostPool, layout, blocks, expected);
      expect(Buffer.from(packed.view()).equals(Buffer.from(expected.view()))).toBe(true);

      // Scatter into other engine blocks of a second pool, then compare block by block on the CPU.
      const pool2 = DeviceRegion.allocate(poolBytes);
      const targets = [1, 2, 3, 4, 6, 8];
      await scatterBlocks(gpu, pool2, layout, targets, packed);
      const hostPool2 = Region.allocate(poolBytes, { pin: true });
      (
        await gpu.submit(new TransferBatch().copy(hostPool2, 0, pool2, 0, poolBytes))
      ).throwIfFailed();
      const regathered = Region.allocate(blocks.length * layout.blockBytes);
      await gatherBlocks(cpu, hostPool2, layout, targets, regathered);
      expect(Buffer.from(regathered.view()).equals(Buffer.from(expected.view()))).toBe(true);

      await Promise.all(
        [hostPool, pool, packed, expected, pool2, hostPool2, regathered].map((x) => x.close()),
      );
      await Promise.all([gpu.close(), cpu.close()]);
    },
  );
});

describe.skipIf(!hasGpu)('GPU file engine', () => {
  const paths: GpuFileIo[] = ['posix', 'cufile'];
  for (const io of paths) {
    it(`writes GPU memory to a file and reads it back (${io})`, async ({ skip }) => {
      if (
        io === 'cufile' &&
        !prerequisite(cufileReason === '', `cuFile path (${cufileReason})`, 'hardware')
      ) {
        skip();
      }
      const engine = createGpuFileEngine({ io, threads: 4, chunkBytes: MiB });
      expect(engine.kind).toBe(io);
      expect(engine.stats().io).toBe(io);
      const copy = createCopyEngine();
      const size = 9 * MiB + 4096; // not a multiple of the chunk: the last chunk is short
      const host = Region.allocate(size, { pin: true });
      randomFillSync(host.view());
      const src = DeviceRegion.allocate(size);
      const dst = DeviceRegion.allocate(size);
      (await copy.submit(new TransferBatch().copy(src, 0, host, 0, size))).throwIfFailed();
      const file = await openFile(join(dir.path, `blocks-${io}.kvt`), {
        create: true,
        truncate: true,
      });
      // Two writes at different offsets, then reads that swap them back into order.
      const half = 4 * MiB + 4096;
      const w = await engine.submit(
        new TransferBatch()
          .write(file, half + MiB, src, 0, half)
          .write(file, 0, src, half, size - half),
      );
      w.throwIfFailed();
      expect(w.bytes).toEqual([half, size - half]);
      await engine.sync(file);
      const rd = await engine.submit(
        new TransferBatch()
          .read(file, half + MiB, dst, 0, half)
          .read(file, 0, dst, half, size - half),
      );
      rd.throwIfFailed();
      const back = Region.allocate(size, { pin: true });
      (await copy.submit(new TransferBatch().copy(back, 0, dst, 0, size))).throwIfFailed();
      expect(Buffer.from(back.view()).equals(Buffer.from(host.view()))).toBe(true);
      // A read past the end of the file is short, not an error.
      const tail = await engine.submit(
        new TransferBatch().read(file, 2 * half + MiB - 4096, dst, 0, 8192),
      );
      expect(tail.errors[0]).toBeUndefined();
      expect(tail.bytes[0]).toBe(4096);
      await file.close();
      await Promise.all([host.close(), src.close(), dst.close(), back.close()]);
      await Promise.all([engine.close(), copy.close()]);
    });
  }

  it("says which path 'auto' took, and moves the bytes either way", async () => {
    const engine = createGpuFileEngine({ io: 'auto' });
    const s = engine.stats();
    expect(['cufile', 'posix']).toContain(s.io);
    expect(s.reason.length).toBeGreaterThan(0);
    if (cufileReason === '') expect(s.io).toBe('cufile');
    const copy = createCopyEngine();
    const size = 2 * MiB;
    const host = Region.allocate(size, { pin: true });
    randomFillSync(host.view());
    const dev = DeviceRegion.allocate(size);
    (await copy.submit(new TransferBatch().copy(dev, 0, host, 0, size))).throwIfFailed();
    const file = await openFile(join(dir.path, 'auto.kvt'), { create: true, truncate: true });
    (await engine.submit(new TransferBatch().write(file, 0, dev, 0, size))).throwIfFailed();
    const back = DeviceRegion.allocate(size);
    (await engine.submit(new TransferBatch().read(file, 0, back, 0, size))).throwIfFailed();
    const out = new Uint8Array(size);
    (await copy.submit(new TransferBatch().copy(out, 0, back, 0, size))).throwIfFailed();
    expect(Buffer.from(out).equals(Buffer.from(host.view()))).toBe(true);
    // Where cuFile would not take the file, the POSIX path did, and the engine says so.
    expect(engine.stats().posixFallbacks).toBeGreaterThanOrEqual(0);
    if (s.io === 'posix') expect(engine.stats().posixFallbacks).toBe(0);
    await file.close();
    await Promise.all([host.close(), dev.close(), back.close(), copy.close()]);
    await engine.close();
  });
});
