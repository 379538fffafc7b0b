import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';

import {
  createEngine,
  KvtierError,
  openFile,
  Region,
  TransferBatch,
  type EngineKind,
} from '../../lib/index.js';
import { native } from '../../lib/core/native.js';
import { engineKinds } from '../engines.js';
import { randomBytes, tempDir } from '../helpers.js';

const dir = tempDir();
afterAll(() => dir.remove());
let n = 0;
const fresh = (): string => join(dir.path, `f${n++}.bin`);

async function errorOf(p: Promise<unknown>): Promise<KvtierError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(KvtierError);
  return e as KvtierError;
}

describe.each(engineKinds())('%s engine', (kind: EngineKind) => {
  it('writes and reads back a batch byte for byte', async () => {
    const engine = createEngine({ kind, queueDepth: 8 });
    expect(engine.kind).toBe(kind);
    const block = 64 * 1024;
    const blocks = 40;
    const src = Region.allocate(block * blocks);
    src.view().set(randomBytes(block * blocks));
    const file = await openFile(fresh(), { create: true, size: block * blocks });
    // Scatter: block i goes to file slot (i * 7) % blocks.
    const w = new TransferBatch();
    for (let i = 0; i < blocks; i++) w.write(file, ((i * 7) % blocks) * block, src, i * block, block);
    const wr = await engine.submit(w);
    expect(wr.ok).toBe(true);
    expect(wr.bytes).toEqual(new Array(blocks).fill(block));

    const dst = Region.allocate(block * blocks);
    const r = new TransferBatch();
    for (let i = 0; i < blocks; i++) r.read(file, ((i * 7) % blocks) * block, dst, i * block, block);
    const rr = await engine.submit(r);
    expect(rr.ok).toBe(true);
    expect(Buffer.compare(dst.view(), src.view())).toBe(0);
    // And the file on disk holds exactly what was written where it was written.
    const onDisk = readFileSync(file.path);
    for (let i = 0; i < blocks; i++) {
      const at = ((i * 7) % blocks) * block;
      expect(Buffer.compare(onDisk.subarray(at, at + block), src.view(i * block, block))).toBe(0);
    }
    await Promise.all([src.close(), dst.close(), file.close()]);
    await engine.close();
  });

  it('native close() finishes every op already queued before it joins (worker pool drain)', async () => {
    // The public close() waits for batches first; the binding's own close() must still complete
    // whatever its threads have queued, or a batch's promise would never settle.
    const engine = new (native().NativeEngine)({ kind: kind as 'io_uring' | 'threads', queueDepth: 1 });
    const block = 4096;
    const blocks = 64;
    const src = Region.allocate(block * blocks);
    src.view().set(randomBytes(block * blocks));
    const file = await openFile(fresh(), { create: true, size: block * blocks });
    const w = new TransferBatch();
    for (let i = 0; i < blocks; i++) w.write(file, i * block, src, i * block, block);
    const done = engine.submit(
      w.packed(),
      w.targets,
      w.files.map((f) => f.native),
    );
    engine.close();
    const results = await done;
    expect(Array.from(results)).toEqual(new Array(blocks).fill(block));
    expect(Buffer.compare(readFileSync(file.path), src.view())).toBe(0);
    await Promise.all([src.close(), file.close()]);
  });

  it('moves ordinary unaligned Buffers through a bounce buffer', async () => {
    const engine = createEngine({ kind, queueDepth: 4 });
    const file = await openFile(fresh(), { create: true });
    expect(file.direct).toBe(true);
    const data = randomBytes(3 * 4096 + 1).subarray(1); // misaligned address on purpose
    expect(await engine.write(file, 8192, data)).toBe(3 * 4096);
    const back = Buffer.alloc(3 * 4096 + 3).subarray(3);
    expect(await engine.read(file, 8192, back)).toBe(3 * 4096);
    expect(Buffer.compare(back, data)).toBe(0);
    await file.close();
    await engine.close();
  });

  it('reports a read past end of file as short and leaves the rest of the target alone', async () => {
    const engine = createEngine({ kind, queueDepth: 4 });
    const path = fresh();
    const content = randomBytes(4096 * 3);
    writeFileSync(path, content);
    const file = await openFile(path);
    const target = Region.allocate(4096 * 4);
    target.view().fill(0xee);
    const r = await engine.submit(
      new TransferBatch().read(file, 4096, target, 0, 4096 * 4).read(file, 4096 * 8, target, 0, 4096),
    );
    expect(r.ok).toBe(true);
    expect(r.bytes).toEqual([4096 * 2, 0]);
    expect(Buffer.compare(target.view(0, 8192), content.subarray(4096))).toBe(0);
    // Buffered reads of an unaligned tail stop at the exact end of file too.
    const tailPath = fresh();
    writeFileSync(tailPath, content.subarray(0, 5000));
    const tail = await openFile(tailPath, { direct: 'auto' });
    const buf = Buffer.alloc(8192, 0xee);
    expect(await engine.read(tail, 0, buf)).toBe(5000);
    expect(Buffer.compare(buf.subarray(0, 5000), content.subarray(0, 5000))).toBe(0);
    expect(buf.subarray(5000).every((b) => b === 0xee || b === 0)).toBe(true);
    await Promise.all([file.close(), tail.close(), target.close()]);
    await engine.close();
  });

  it('matches a byte-array model for random unaligned transfers with direct: auto', async () => {
    const engine = createEngine({ kind, queueDepth: 8 });
    const size = 256 * 1024;
    const file = await openFile(fresh(), { create: true, direct: 'auto', size });
    const model = Buffer.alloc(size);
    const op = fc.record({
      offset: fc.integer({ min: 0, max: size - 1 }),
      length: fc.integer({ min: 0, max: 20_000 }),
      seed: fc.integer({ min: 0, max: 255 }),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 12 }), async (ops) => {
        // Writes that do not overlap within one batch (the kernel may order overlapping ones any way).
        const batch = new TransferBatch();
        const taken: [number, number][] = [];
        for (const o of ops) {
          const len = Math.min(o.length, size - o.offset);
          if (taken.some(([a, b]) => o.offset < b && a < o.offset + len)) continue;
          taken.push([o.offset, o.offset + len]);
          const data = Buffer.alloc(len, o.seed);
          batch.write(file, o.offset, data);
          data.copy(model, o.offset);
        }
        const w = await engine.submit(batch);
        expect(w.ok).toBe(true);
        const back = Buffer.alloc(size);
        const r = await engine.submit(new TransferBatch().read(file, 0, back));
        expect(r.bytes[0]).toBe(size);
        expect(Buffer.compare(back, model)).toBe(0);
      }),
      { numRuns: 25 },
    );
    await file.close();
    await engine.close();
  });

  it('refuses a batch with any bad descriptor and moves nothing', async () => {
    const engine = createEngine({ kind, queueDepth: 4 });
    const path = fresh();
    const before = randomBytes(16384);
    writeFileSync(path, before);
    const file = await openFile(path);
    const region = Region.allocate(8192);
    region.view().fill(7);
    const bad: [string, (b: TransferBatch) => TransferBatch][] = [
      ['negative file offset', (b) => b.write(file, -4096, region, 0, 4096)],
      ['fractional length', (b) => b.write(file, 0, region, 0, 4096.5)],
      ['NaN offset', (b) => b.write(file, Number.NaN, region, 0, 4096)],
      ['huge offset', (b) => b.write(file, 2 ** 64, region, 0, 4096)],
      ['region too small', (b) => b.write(file, 0, region, 4096, 8192)],
      ['negative region offset', (b) => b.write(file, 0, region, -1, 4096)],
      ['unaligned O_DIRECT offset', (b) => b.write(file, 100, region, 0, 4096)],
      ['unaligned O_DIRECT length', (b) => b.write(file, 0, region, 0, 1000)],
    ];
    for (const [, add] of bad) {
      // A good descriptor first: it must not run either.
      const batch = add(new TransferBatch().write(file, 4096, region, 0, 4096));
      const e = await errorOf(engine.submit(batch));
      expect(e.code).toBe('KVTIER_BAD_ARGUMENT');
      expect(e.message).toMatch(/descriptor 1/);
    }
    expect(Buffer.compare(readFileSync(path), before)).toBe(0);
    await Promise.all([file.close(), region.close()]);
    await engine.close();
  });

  it('refuses closed regions and files, detached buffers and read-only writes', async () => {
    const engine = createEngine({ kind, queueDepth: 4 });
    const path = fresh();
    writeFileSync(path, randomBytes(8192));
    const file = await openFile(path, { readOnly: true });
    const region = Region.allocate(4096);
    expect((await errorOf(engine.write(file, 0, region))).code).toBe('KVTIER_BAD_ARGUMENT');

    const detached = new ArrayBuffer(4096);
    const view = new Uint8Array(detached);
    structuredClone(detached, { transfer: [detached] });
    expect((await errorOf(engine.read(file, 0, view, 0, 4096))).code).toBe(
      'KVTIER_BAD_ARGUMENT',
    );
    expect((await errorOf(engine.read(file, 0, detached, 0, 4096))).code).toBe('KVTIER_BAD_ARGUMENT');

    await region.close();
    expect((await errorOf(engine.read(file, 0, region))).code).toBe('KVTIER_CLOSED');
    const open = Region.allocate(4096);
    await file.close();
    expect((await errorOf(engine.read(file, 0, open))).code).toBe('KVTIER_CLOSED');
    await open.close();
    await engine.close();
    const other = await openFile(path, { readOnly: true });
    const buf = Buffer.alloc(4096);
    expect((await errorOf(engine.read(other, 0, buf))).code).toBe('KVTIER_CLOSED');
    await other.close();
  });

  it('reports a failing descriptor with errno and syscall, and still runs the others', async () => {
    const engine = createEngine({ kind, queueDepth: 4 });
    const path = fresh();
    const content = randomBytes(4096);
    writeFileSync(path, content);
    const good = await openFile(path);
    const directory = await openFile(dir.path, { readOnly: true, direct: false });
    const a = Buffer.alloc(4096);
    const b = Buffer.alloc(4096);
    const result = await engine.submit(
      new TransferBatch().read(directory, 0, a).read(good, 0, b),
    );
    expect(result.failed).toBe(1);
    expect(result.errors[0]).toMatchObject({ code: 'KVTIER_IO', errno: 21 });
    expect(result.errors[0]?.syscall).toMatch(kind === 'threads' ? /^pread$/ : /^io_uring:read$/);
    expect(result.bytes[1]).toBe(4096);
    expect(Buffer.compare(b, content)).toBe(0);
    expect(() => result.throwIfFailed()).toThrow(KvtierError);
    await Promise.all([good.close(), directory.close()]);
    await engine.close();
  });

  it('lets close() of a region, a file and the engine wait for transfers in flight', async () => {
    const engine = createEngine({ kind, queueDepth: 2 });
    const block = 1 << 20;
    const count = 32;
    const src = Region.allocate(block * count);
    src.view().set(randomBytes(block * count));
    const file = await openFile(fresh(), { create: true, size: block * count });
    const batch = new TransferBatch();
    for (let i = 0; i < count; i++) batch.write(file, i * block, src, i * block, block);
    const writing = engine.submit(batch);
    const closing = Promise.all([src.close(), file.close(), engine.close()]);
    const result = await writing;
    await closing;
    expect(result.ok).toBe(true);
    expect(result.bytes.reduce((x, y) => x + y, 0)).toBe(block * count);
    expect(src.closed && file.closed).toBe(true);
  });

  it('keeps native memory and descriptors alive when closed natively mid-flight', async () => {
    // Bypasses the TypeScript layer's waiting on purpose: the native side alone must keep the
    // pages mapped and the descriptor open until the kernel is done (the ASan run checks this).
    const engine = createEngine({ kind, queueDepth: 2 });
    const block = 1 << 20;
    const count = 16;
    const path = fresh();
    const content = randomBytes(block * count);
    writeFileSync(path, content);
    const file = await openFile(path);
    const dst = Region.allocate(block * count);
    const batch = new TransferBatch();
    for (let i = 0; i < count; i++) batch.read(file, i * block, dst, i * block, block);
    const reading = engine.submit(batch);
    dst.native.close();
    file.native.close();
    const result = await reading;
    expect(result.ok).toBe(true);
    expect(result.bytes.every((b) => b === block)).toBe(true);
    expect(dst.native.closed).toBe(true);
    await engine.close();
  });

  it('treats a region\'s bare buffer as the region, so close() waits for it', async () => {
    const engine = createEngine({ kind, queueDepth: 4 });
    const src = Region.allocate(16 << 20);
    src.view().set(randomBytes(16 << 20));
    for (let r = 0; r < 4; r++) {
      const dst = Region.allocate(16 << 20);
      const batch = new TransferBatch();
      for (let i = 0; i < 16; i++) batch.copy(dst.buffer, i << 20, src, i << 20, 1 << 20);
      const copying = engine.submit(batch);
      const closing = dst.close(); // must not unmap while the copies run
      expect((await copying).ok).toBe(true);
      await closing;
    }
    await src.close();
    await engine.close();
  });

  it('makes data durable with sync(): the fdatasync reaches the kernel', async () => {
    const engine = createEngine({ kind, queueDepth: 4 });
    const file = await openFile(fresh(), { create: true });
    await engine.write(file, 0, randomBytes(4096));
    const synced = await engine.submit(new TransferBatch().sync(file));
    expect(synced.ok).toBe(true);
    expect(synced.bytes).toEqual([0]);
    // The kernel refuses to sync a character device (EINVAL): an error that only a real
    // fdatasync (or io_uring fsync) can produce, with the errno and syscall it came from.
    const device = await openFile('/dev/null', { direct: false });
    const e = await errorOf(engine.sync(device));
    expect(e).toMatchObject({ code: 'KVTIER_IO', errno: 22 });
    expect(e.syscall).toMatch(/sync/);
    expect(e.message).toMatch(/sync on \/dev\/null failed: EINVAL/);
    await device.close();
    await file.close();
    expect((await errorOf(engine.sync(file))).code).toBe('KVTIER_CLOSED');
    await engine.close();
  });
});

describe('createEngine', () => {
  it('rejects unknown kinds and bad queue depths', () => {
    expect(() => createEngine({ kind: 'spdk' as EngineKind })).toThrow(
      expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }),
    );
    for (const queueDepth of [0, -1, 1.5, 100_000, Number.NaN]) {
      expect(() => createEngine({ kind: 'threads', queueDepth })).toThrow(
        expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }),
      );
    }
  });

  it("says which engine 'auto' chose and why", async () => {
    const engine = createEngine();
    expect(['io_uring', 'threads']).toContain(engine.kind);
    expect(engine.reason).not.toBe('');
    await engine.close();
  });
});
