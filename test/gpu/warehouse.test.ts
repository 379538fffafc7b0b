// The Warehouse with a GPU tier on a real GPU: blocks spill from GPU memory to host and file and
// come back byte for byte; a pool the caller owns is filled but never freed.
import { afterAll, describe, expect, it } from 'vitest';

import {
  chainKeys,
  createCopyEngine,
  createEngine,
  describeKvLayout,
  DeviceRegion,
  gatherBlocks,
  Region,
  TransferBatch,
  Warehouse,
} from '../../lib/index.js';
import { blocksFor } from '../blocks.js';
import { tempDir } from '../helpers.js';
import { hasGpu } from './gpu.js';

const BS = 256 * 1024;
const dir = tempDir('kvtier-gpu-wh-');
afterAll(() => dir.remove());

function chain(n: number, namespace: string): string[] {
  const tokens = Uint32Array.from({ length: n * 4 }, (_, i) => i);
  return chainKeys(tokens, { blockTokens: 4, namespace }).keys();
}

describe.skipIf(!hasGpu)('Warehouse with a GPU tier', () => {
  it('spills from GPU to host and file and returns every byte', async () => {
    const w = await Warehouse.open({
      blockBytes: BS,
      tiers: [
        { kind: 'gpu', bytes: 8 * BS },
        { kind: 'host', bytes: 16 * BS },
        { kind: 'file', dir: dir.path, bytes: 64 * BS },
      ],
    });
    const keys = chain(40, 'spill');
    const src = blocksFor(keys, BS);
    for (let at = 0; at < keys.length; at += 8) {
      const r = await w.put(keys.slice(at, at + 8), src.subarray(at * BS, (at + 8) * BS));
      expect(r.stored).toBe(8);
    }
    const stats = w.stats();
    expect(stats.tiers.map((t) => t.kind)).toEqual(['gpu', 'host', 'file']);
    expect(stats.tiers[0]!.usedBlocks).toBe(8);
    // Demotions are counted where the blocks land: the host tier, from the full GPU tier.
    expect(stats.tiers[1]!.demotions).toBeGreaterThan(0);
    const dst = Region.allocate(keys.length * BS, { pin: true });
    const got = await w.get(keys, dst);
    expect(got.count).toBe(keys.length);
    expect(Buffer.from(dst.view()).equals(Buffer.from(src))).toBe(true);
    expect(w.stats().corrupt).toBe(0);
    // Device memory is refused as a put source or get destination.
    const dev = DeviceRegion.allocate(BS);
    await expect(w.put(chain(1, 'x'), dev as never)).rejects.toMatchObject({
      code: 'KVTIER_BAD_ARGUMENT',
    });
    await dev.close();
    await w.close();
    await dst.close();
  });

  it('moves blocks between GPU and file through host staging, and keeps them across a restart', async () => {
    const where = tempDir('kvtier-gpu-file-');
    const tiers = [
      { kind: 'gpu' as const, bytes: 4 * BS },
      { kind: 'file' as const, dir: where.path, bytes: 32 * BS },
    ];
    const w = await Warehouse.open({ blockBytes: BS, tiers });
    const keys = chain(12, 'gpu-file');
    const src = blocksFor(keys, BS);
    for (let at = 0; at < keys.length; at += 4) {
      expect(
        (await w.put(keys.slice(at, at + 4), src.subarray(at * BS, (at + 4) * BS))).stored,
      ).toBe(4);
    }
    expect(w.stats().tiers[1]!.demotions).toBeGreaterThan(0); // GPU to file, staged
    const dst = Region.allocate(keys.length * BS, { pin: true });
    expect((await w.get(keys, dst)).count).toBe(keys.length);
    expect(Buffer.from(dst.view()).equals(Buffer.from(src))).toBe(true);
    // Four new blocks push everything else out of the GPU; then a prefetch brings two back up
    // from the file: staged the other way.
    const push = chain(4, 'push');
    expect((await w.put(push, blocksFor(push, BS))).stored).toBe(4);
    const last = keys.slice(0, 2);
    expect(w.lookup(last).tiers).toEqual([1, 1]);
    expect((await w.prefetch(last, { to: 0 })).moved).toBe(2);
    expect(w.lookup(last).tiers).toEqual([0, 0]);
    await w.close(); // blocks only on the GPU are written to the file tier first
    const again = await Warehouse.open({ blockBytes: BS, tiers: [tiers[1]!] });
    dst.view().fill(0);
    expect((await again.get(keys, dst)).count).toBe(keys.length);
    expect(Buffer.from(dst.view()).equals(Buffer.from(src))).toBe(true);
    expect(again.stats().corrupt).toBe(0);
    await again.close();
    await dst.close();
    where.remove();
  });

  it("fills a pool the caller owns and leaves it the caller's", async () => {
    const pool = DeviceRegion.allocate(4 * BS + 1000);
    const w = await Warehouse.open({
      blockBytes: BS,
      tiers: [
        { kind: 'gpu', region: pool },
        { kind: 'host', bytes: 8 * BS },
      ],
    });
    expect(w.stats().tiers[0]!.capacityBlocks).toBe(4);
    const keys = chain(4, 'owned');
    const src = blocksFor(keys, BS);
    expect((await w.put(keys, src)).stored).toBe(4);
    const dst = new Uint8Array(4 * BS);
    expect((await w.get(keys, dst)).count).toBe(4);
    expect(Buffer.from(dst).equals(Buffer.from(src))).toBe(true);
    await w.close();
    expect(pool.closed).toBe(false);
    // The blocks are still in the caller's memory, in kvtier's slots.
    const copy = createCopyEngine();
    const back = new Uint8Array(4 * BS);
    (await copy.submit(new TransferBatch().copy(back, 0, pool, 0, 4 * BS))).throwIfFailed();
    const slots = new Set<string>();
    for (let i = 0; i < 4; i++)
      slots.add(Buffer.from(back.subarray(i * BS, (i + 1) * BS)).toString('hex', 0, 32));
    for (let i = 0; i < 4; i++)
      expect(slots.has(Buffer.from(src.subarray(i * BS, i * BS + 32)).toString('hex'))).toBe(true);
    await copy.close();
    await pool.close();
  });
});

describe.skipIf(!hasGpu)("Warehouse over an engine's paged KV pool", () => {
  it('keeps blocks in the engine blocks it was given, and flushes them at close', async () => {
    // A small vLLM-style pool: 4 layers of [2, 16 blocks, 16 tokens, 2 heads, 64] fp16 = 16 KiB
    // pieces, 128 KiB engine blocks.
    const layout = describeKvLayout({
      form: 'kv-first',
      numLayers: 4,
      numBlocks: 16,
      blockTokens: 16,
      kvHeads: 2,
      headDim: 64,
      dtype: 'fp16',
      layers: Array.from({ length: 4 }, (_, l) => ({ offset: l * 2 * 16 * 16 * 2 * 64 * 2 })),
    });
    const bs = layout.blockBytes;
    const pool = DeviceRegion.allocate(layout.extent);
    const given = [3, 5, 7, 9]; // the engine lends kvtier four of its blocks
    const where = tempDir('kvtier-paged-');
    const w = await Warehouse.open({
      blockBytes: bs,
      tiers: [
        { kind: 'gpu', region: pool, layout, blocks: given },
        { kind: 'host', bytes: 4 * bs },
        { kind: 'file', dir: where.path, bytes: 32 * bs },
      ],
    });
    expect(w.stats().tiers[0]!.capacityBlocks).toBe(4);
    const keys = chain(10, 'paged');
    const src = blocksFor(keys, bs);
    expect((await w.put(keys.slice(0, 4), src.subarray(0, 4 * bs))).stored).toBe(4);
    // The four blocks are in the engine's own blocks, in its layout.
    const copy = createCopyEngine();
    const host = Region.allocate(layout.extent, { pin: true });
    (await copy.submit(new TransferBatch().copy(host, 0, pool, 0, layout.extent))).throwIfFailed();
    const cpu = createEngine({ kind: 'threads', threads: 1 });
    const packed = new Uint8Array(4 * bs);
    await gatherBlocks(cpu, host, layout, given, packed);
    const inPool = new Set<string>();
    for (let i = 0; i < 4; i++)
      inPool.add(Buffer.from(packed.subarray(i * bs, (i + 1) * bs)).toString('base64'));
    for (let i = 0; i < 4; i++)
      expect(inPool.has(Buffer.from(src.subarray(i * bs, (i + 1) * bs)).toString('base64'))).toBe(
        true,
      );
    // More blocks than the engine lent: they spill to host and file and all come back.
    expect((await w.put(keys.slice(4), src.subarray(4 * bs))).stored).toBe(6);
    const dst = Region.allocate(keys.length * bs, { pin: true });
    expect((await w.get(keys, dst)).count).toBe(keys.length);
    expect(Buffer.from(dst.view()).equals(Buffer.from(src))).toBe(true);
    expect(w.stats().corrupt).toBe(0);
    await w.close();
    // A restart without the GPU finds every block on the file tier.
    const again = await Warehouse.open({
      blockBytes: bs,
      tiers: [
        { kind: 'host', bytes: 4 * bs },
        { kind: 'file', dir: where.path, bytes: 32 * bs },
      ],
    });
    dst.view().fill(0);
    expect((await again.get(keys, dst)).count).toBe(keys.length);
    expect(Buffer.from(dst.view()).equals(Buffer.from(src))).toBe(true);
    await again.close();
    await Promise.all([pool.close(), host.close(), dst.close(), copy.close(), cpu.close()]);
    where.remove();
  });
});
