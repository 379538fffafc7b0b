// The file tier's edges: block sizes it cannot write, damaged headers, failed opens, busy puts.
import {
  closeSync,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import {
  chainKeys,
  KvtierError,
  Warehouse,
  type CloseError,
  type WarehouseOptions,
} from '../../lib/index.js';
import { native } from '../../lib/core/native.js';
import { blockFor, blocksFor } from '../blocks.js';
import { tempDir } from '../helpers.js';

const BS = 16 * 1024;
const dirs: { remove(): void }[] = [];
afterAll(() => dirs.forEach((d) => d.remove()));
function dir(): string {
  const d = tempDir('kvtier-whf-');
  dirs.push(d);
  return d.path;
}

function chain(n: number, namespace = 'file'): string[] {
  const tokens = Uint32Array.from({ length: n * 4 }, (_, i) => i);
  return chainKeys(tokens, { blockTokens: 4, namespace }).keys();
}

function fileOnly(d: string, blocks: number, extra: Partial<WarehouseOptions> = {}) {
  return Warehouse.open({
    blockBytes: BS,
    tiers: [{ kind: 'file', dir: d, bytes: blocks * BS }],
    ...extra,
  });
}

interface Meta {
  headerBytes: number;
  slots: number;
}

/** Rewrites the header of the slot holding `key` through `edit`, then fixes its CRC. */
function editHeader(d: string, key: string, edit: (header: Buffer) => void): void {
  const meta = JSON.parse(readFileSync(join(d, 'kvtier.meta.json'), 'utf8')) as Meta;
  const fd = openSync(join(d, 'blocks.kvt'), 'r+');
  try {
    const table = Buffer.alloc(meta.slots * meta.headerBytes);
    readSync(fd, table, 0, table.length, 0);
    for (let slot = 0; slot < meta.slots; slot++) {
      const h = table.subarray(slot * meta.headerBytes, (slot + 1) * meta.headerBytes);
      if (h.toString('latin1', 0, 8) !== 'KVTBLK01') continue;
      if (h.toString('hex', 16, 16 + h.readUInt32LE(8)) !== key) continue;
      edit(h);
      h.writeUInt32LE(native().crc32c(h.subarray(0, 72)), 72);
      writeSync(fd, h, 0, h.length, slot * meta.headerBytes);
      return;
    }
    throw new Error(`no header names ${key}`);
  } finally {
    closeSync(fd);
  }
}

describe('file tier block size', () => {
  it('refuses a blockBytes that is not a multiple of the O_DIRECT alignment, naming it, and creates nothing', async () => {
    const parent = dir();
    const align = native().probeDirect(parent).offsetAlign!;
    expect(align).toBeGreaterThan(1);
    const blockBytes = align * 8 + align / 2;
    for (const tiers of [
      (d: string) => [{ kind: 'file' as const, dir: d, bytes: 64 * blockBytes }],
      (d: string) => [
        { kind: 'host' as const, bytes: 4 * blockBytes },
        { kind: 'file' as const, dir: d, bytes: 64 * blockBytes },
      ],
    ]) {
      const d = join(parent, `new-${tiers.length}`, 'tier');
      const error = (await Warehouse.open({ blockBytes, tiers: tiers(d) }).catch(
        (e: unknown) => e,
      )) as Error;
      expect(error).toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
      expect(error.message).toContain(`multiple of ${align}`);
      // The directories it would have needed were not left behind.
      expect(existsSync(join(parent, `new-${tiers.length}`))).toBe(false);
    }
    // A block size that fits the alignment still works in the same place.
    const wh = await Warehouse.open({
      blockBytes: align * 8,
      tiers: [{ kind: 'file', dir: join(parent, 'ok'), bytes: 8 * align * 8 }],
    });
    const keys = chain(4);
    expect((await wh.put(keys, blocksFor(keys, align * 8))).stored).toBe(4);
    await wh.close();
  });

  it('refuses a directory recorded with such a block size (by an older kvtier) and leaves it as it was', async () => {
    const d = dir();
    await (await fileOnly(d, 8)).close();
    const metaPath = join(d, 'kvtier.meta.json');
    const record = JSON.parse(readFileSync(metaPath, 'utf8')) as Record<string, number>;
    // What kvtier wrote before it checked: blockBytes 1000 on a 512-aligned filesystem.
    writeFileSync(
      metaPath,
      JSON.stringify({ ...record, blockBytes: 1000, slotBytes: 4096, slots: 8 }),
    );
    const before = readdirSync(d).sort();
    const meta = readFileSync(metaPath, 'utf8');
    const error = (await Warehouse.open({
      blockBytes: 1000,
      tiers: [{ kind: 'file', dir: d, bytes: 8000 }],
    }).catch((e: unknown) => e)) as Error;
    expect(error).toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
    expect(error.message).toMatch(/multiple of \d+, the O_DIRECT alignment/);
    expect(readdirSync(d).sort()).toEqual(before);
    expect(readFileSync(metaPath, 'utf8')).toBe(meta);
    // The lock was released: another process could take the directory now.
    writeFileSync(metaPath, JSON.stringify(record));
    await (await fileOnly(d, 8)).close();
  });
});

describe('file tier header scan', () => {
  it('treats a checksummed header with a wrong payload length as one corrupt block, not a failed get', async () => {
    const d = dir();
    const keys = chain(6);
    const wh = await fileOnly(d, 16);
    await wh.put(keys, blocksFor(keys, BS));
    await wh.close();
    editHeader(d, keys[2]!, (h) => h.writeBigUInt64LE(BigInt(BS / 2), 48));
    editHeader(d, keys[4]!, (h) => h.writeUInt32LE(40, 8)); // key length past 32

    const again = await fileOnly(d, 16);
    expect(again.stats().corrupt).toBe(2);
    expect(again.stats().tiers[0]!.corrupt).toBe(2);
    expect(again.lookup(keys).tiers).toEqual([0, 0, -1, 0, -1, 0]);
    const dst = Buffer.alloc(keys.length * BS);
    const got = await again.get(keys, dst);
    expect(got.found).toEqual([true, true, false, true, false, true]);
    for (const i of [0, 1, 3, 5]) {
      expect(dst.subarray(i * BS, (i + 1) * BS).equals(blockFor(keys[i]!, BS))).toBe(true);
    }
    // The damaged slots are free again: the blocks can be stored anew and read back.
    const redo = [keys[2]!, keys[4]!];
    expect((await again.put(redo, blocksFor(redo, BS))).status).toEqual(['stored', 'stored']);
    const back = Buffer.alloc(2 * BS);
    expect((await again.get(redo, back)).count).toBe(2);
    expect(back.equals(blocksFor(redo, BS))).toBe(true);
    await again.close();
  });
});

describe('put status', () => {
  it("says 'busy' for a block that found no room because every slot is pinned", async () => {
    const d = dir();
    const wh = await Warehouse.open({
      blockBytes: BS,
      tiers: [
        { kind: 'host', bytes: 4 * BS },
        { kind: 'file', dir: d, bytes: 4 * BS },
      ],
      writeThrough: true,
    });
    const held = chain(4, 'held');
    expect((await wh.put(held, blocksFor(held, BS))).status).toEqual(held.map(() => 'stored'));
    wh.pin(held, { ttlMs: 60_000 });
    const more = chain(3, 'more');
    // A key named twice has its first mention's status, and counts once.
    const keys = [held[0]!, ...more, more[0]!];
    const result = await wh.put(keys, blocksFor(keys, BS));
    expect(result).toEqual({
      stored: 0,
      present: 1,
      rejected: 3,
      status: ['present', 'busy', 'busy', 'busy', 'busy'],
      tiers: [-1, -1, -1, -1, -1],
    });
    expect(wh.lookup(more).tiers).toEqual([-1, -1, -1]);
    await wh.close();
  });
});

describe('close', () => {
  it('releases the lock and closes the files when it fails part way, naming the blocks it lost', async () => {
    const d = dir();
    const options: WarehouseOptions = {
      blockBytes: BS,
      tiers: [
        { kind: 'host', bytes: 8 * BS },
        { kind: 'file', dir: d, bytes: 16 * BS },
      ],
    };
    const wh = await Warehouse.open(options);
    const keys = chain(4);
    await wh.put(keys, blocksFor(keys, BS));
    // Fault injection: the blocks file goes away under the warehouse, so the write-down of the
    // host-only blocks throws part way through close().
    const internals = wh as unknown as {
      parts: { tiers: { file?: { close(): Promise<void> } }[] };
    };
    await internals.parts.tiers[1]!.file!.close();
    const error = (await wh.close().catch((e: unknown) => e)) as CloseError;
    expect(error).toBeInstanceOf(KvtierError);
    expect(error.code).toBe('KVTIER_CLOSED');
    expect([...error.unwritten].sort()).toEqual([...keys].sort());
    expect(error.message).toContain('4 block(s)');
    // The directory is free again, and holds none of the lost blocks.
    const again = await Warehouse.open(options);
    expect(again.lookup(keys).tiers).toEqual([-1, -1, -1, -1]);
    await again.close();
  });
});

describe('gathered slot headers', () => {
  it('are on disk after close, also when the last concurrent put had no header of its own', async () => {
    // Written-through blocks get file-tier headers 'later', gathered while other puts run; a
    // host-only put running beside them has none. Whichever finishes last, close() must leave
    // every stored block described, so a restart finds it.
    for (let round = 0; round < 5; round++) {
      const d = dir();
      const options: WarehouseOptions = {
        blockBytes: BS,
        tiers: [
          { kind: 'host', bytes: 128 * BS },
          { kind: 'file', dir: d, bytes: 256 * BS },
        ],
      };
      const wh = await Warehouse.open(options);
      const hostOnly = chain(64, `host-${round}`);
      const through = chain(2, `through-${round}`);
      const [a, b] = await Promise.all([
        wh.put(hostOnly, blocksFor(hostOnly, BS)),
        wh.put(through, blocksFor(through, BS), { writeThrough: true }),
      ]);
      expect(a.stored).toBe(64);
      expect(b.stored).toBe(2);
      await wh.close();
      const again = await Warehouse.open(options);
      try {
        expect(again.lookup(through).tiers).toEqual([1, 1]);
        const back = Buffer.alloc(2 * BS);
        expect((await again.get(through, back)).count).toBe(2);
        expect(back.equals(blocksFor(through, BS))).toBe(true);
      } finally {
        await again.close();
      }
    }
  });
});
