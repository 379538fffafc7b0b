import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  createEngine,
  openFile,
  Region,
  TransferBatch,
  Warehouse,
  chainKeys,
  type CloseError,
  type EngineKind,
  type PutStatus,
} from '../../lib/index.js';
import { blocksFor } from '../blocks.js';
import { engineKinds } from '../engines.js';
import { prerequisite, randomBytes, tempDir } from '../helpers.js';

const fixtures = fileURLToPath(new URL('./fixtures/', import.meta.url));
const dir = tempDir();
afterAll(() => dir.remove());

/** Mounts a filesystem of our own for the test (needs root and a mount namespace that allows it). */
function mount(type: string, options: string, source = type): string | undefined {
  const at = join(dir.path, `${type}-${Math.random().toString(36).slice(2)}`);
  mkdirSync(at);
  const r = spawnSync('mount', ['-t', type, '-o', options, source, at], { encoding: 'utf8' });
  if (r.status !== 0) {
    prerequisite(
      false,
      `cannot mount ${type} (${r.stderr.trim() || 'not permitted'})`,
      'privilege',
    );
    return undefined;
  }
  mounts.push(at);
  return at;
}
const mounts: string[] = [];

/**
 * A small ext2 filesystem on a loop device. ext2 has no fallocate, so a file tier's blocks file is
 * sparse there and the disk fills up as blocks are written, as on a thin-provisioned or
 * copy-on-write disk: the full disk shows up at put time, not at open.
 */
function ext2(megabytes: number): string | undefined {
  const mkfs = spawnSync('mkfs.ext2', ['-V'], { encoding: 'utf8' });
  if (!prerequisite(mkfs.error === undefined, 'mkfs.ext2 is missing (apt-get install e2fsprogs)')) {
    return undefined;
  }
  const image = join(dir.path, `ext2-${Math.random().toString(36).slice(2)}.img`);
  writeFileSync(image, '');
  truncateSync(image, megabytes << 20);
  execFileSync('mkfs.ext2', ['-q', '-F', '-m', '0', image]);
  return mount('ext2', 'loop', image);
}
afterAll(() => {
  for (const m of mounts) spawnSync('umount', ['-l', m]);
});

beforeAll(() => {
  // The child fixtures run the built package, as a user would.
  if (!existsSync(fileURLToPath(new URL('../../dist/index.js', import.meta.url)))) {
    throw new Error('dist/ is missing: npm test builds it first (npm run build:ts)');
  }
});

describe.each(engineKinds())('%s engine on a full disk', (kind: EngineKind) => {
  it('fails the writes that do not fit with KVTIER_NO_SPACE and keeps the ones that did', async () => {
    const at = mount('tmpfs', 'size=1m');
    if (!at) return;
    const engine = createEngine({ kind, queueDepth: 4 });
    const file = await openFile(join(at, 'full.bin'), { create: true });
    const data = randomBytes(256 * 1024);
    const batch = new TransferBatch();
    for (let i = 0; i < 8; i++) batch.write(file, i * data.length, data);
    const result = await engine.submit(batch);
    expect(result.failed).toBeGreaterThan(0);
    const failure = result.errors.find((e) => e !== undefined);
    expect(failure).toMatchObject({ code: 'KVTIER_NO_SPACE', errno: 28 });
    // Every write reported complete reads back intact.
    for (let i = 0; i < 8; i++) {
      if (result.bytes[i] !== data.length) continue;
      const back = Buffer.alloc(data.length);
      expect(await engine.read(file, i * data.length, back)).toBe(data.length);
      expect(Buffer.compare(back, data)).toBe(0);
    }
    await file.close();
    await engine.close();
  });

  it('reports RLIMIT_FSIZE as KVTIER_NO_SPACE with EFBIG', () => {
    const path = join(dir.path, `fsize-${kind}.bin`);
    // ulimit -f counts 1 KiB blocks in bash: 2 MiB.
    const out = execFileSync(
      'bash',
      [
        '-c',
        `ulimit -f 2048 && exec "${process.execPath}" "${fixtures}fsize-child.mjs" "$0" "$1"`,
        path,
        kind,
      ],
      { encoding: 'utf8' },
    );
    const report = JSON.parse(out) as { written: number; error: Record<string, unknown> | null };
    expect(report.written).toBe(2 << 20);
    expect(report.error).toMatchObject({ code: 'KVTIER_NO_SPACE', errno: 27 });
  });
});

describe('preallocation on a full disk', () => {
  it('fails with KVTIER_NO_SPACE and leaves no file behind', async () => {
    const at = mount('tmpfs', 'size=1m');
    if (!at) return;
    const error = await openFile(join(at, 'big.bin'), { create: true, size: 8 << 20 }).catch(
      (e: unknown) => e,
    );
    expect(error).toMatchObject({ code: 'KVTIER_NO_SPACE', syscall: 'fallocate' });
    expect(readdirSync(at)).toEqual([]);
  });
});

describe('a file tier on a full disk', () => {
  const BS = 64 * 1024;
  const chain = (n: number, namespace: string): string[] =>
    chainKeys(
      Uint32Array.from({ length: n }, (_, i) => i),
      { blockTokens: 1, namespace },
    ).keys();

  it('leaves the directory as it found it after KVTIER_NO_SPACE at open, so a retry that fits works', async () => {
    const at = mount('tmpfs', 'size=1m');
    if (!at) return;
    const d = join(at, 'tier');
    const tiers = (bytes: number) => [{ kind: 'file' as const, dir: d, bytes }];
    const error = await Warehouse.open({ blockBytes: BS, tiers: tiers(8 << 20) }).catch(
      (e: unknown) => e,
    );
    expect(error).toMatchObject({ code: 'KVTIER_NO_SPACE' });
    expect(readdirSync(at)).toEqual([]);
    const wh = await Warehouse.open({ blockBytes: BS, tiers: tiers(8 * BS) });
    const keys = chain(8, 'retry');
    expect((await wh.put(keys, blocksFor(keys, BS))).stored).toBe(8);
    const back = Buffer.alloc(8 * BS);
    expect((await wh.get(keys, back)).count).toBe(8);
    expect(back.equals(blocksFor(keys, BS))).toBe(true);
    await wh.close();
  });

  it("reports blocks the full disk refused as 'no-space', apart from busy ones, and keeps the rest", async () => {
    const at = ext2(4);
    if (!at) return;
    // 256 slots, far more than the disk can hold: the disk fills long before the tier does.
    const wh = await Warehouse.open({
      blockBytes: BS,
      tiers: [{ kind: 'file', dir: join(at, 'tier'), bytes: 256 * BS }],
    });
    const stored: string[] = [];
    const refused: string[] = [];
    for (let round = 0; round < 30 && refused.length === 0; round++) {
      const keys = chain(8, `round-${round}`);
      const r = await wh.put(keys, blocksFor(keys, BS));
      const count = (s: PutStatus) => r.status.filter((x) => x === s).length;
      expect(count('busy')).toBe(0);
      expect(count('io-error')).toBe(0);
      expect(r.stored).toBe(count('stored'));
      expect(r.rejected).toBe(count('no-space'));
      expect(r.stored + r.present + r.rejected).toBe(8);
      r.status.forEach((s, i) => (s === 'stored' ? stored : refused).push(keys[i]!));
    }
    expect(refused.length).toBeGreaterThan(0);
    expect(stored.length).toBeGreaterThan(0);
    const stats = wh.stats();
    expect(stats.ioErrors).toBeGreaterThan(0);
    // The only tier is the file tier: every failure is counted against it, and the sum reconciles.
    expect(stats.tiers[0]!.ioErrors).toBe(stats.ioErrors);
    expect(wh.lookup(refused).tiers.every((t) => t === -1)).toBe(true);
    const back = Buffer.alloc(stored.length * BS);
    expect((await wh.get(stored, back)).count).toBe(stored.length);
    expect(back.equals(blocksFor(stored, BS))).toBe(true);
    await wh.close();
  });

  it('closes everything and names the blocks it could not write down when the disk fills at close', async () => {
    const at = ext2(6);
    if (!at) return;
    const d = join(at, 'tier');
    const options = {
      blockBytes: BS,
      tiers: [
        { kind: 'host' as const, bytes: 128 * BS },
        { kind: 'file' as const, dir: d, bytes: 256 * BS },
      ],
    };
    const wh = await Warehouse.open(options);
    const keys = chain(96, 'close'); // 6 MiB in host memory only, for a 6 MiB disk
    expect((await wh.put(keys, blocksFor(keys, BS))).stored).toBe(96);
    const error = (await wh.close().catch((e: unknown) => e)) as CloseError;
    expect(error).toMatchObject({ code: 'KVTIER_NO_SPACE' });
    expect(error.unwritten.length).toBeGreaterThan(0);
    expect(error.unwritten.length).toBeLessThan(96);
    expect(error.unwritten.every((k) => keys.includes(k))).toBe(true);
    expect(error.message).toContain(`${error.unwritten.length} block(s)`);
    expect(error.message).toContain(error.unwritten[0]!);
    // The lock was released and the files closed: the directory opens again, with every block
    // that was written down, and none of the lost ones.
    const again = await Warehouse.open(options);
    const lost = new Set(error.unwritten);
    const kept = keys.filter((k) => !lost.has(k));
    const back = Buffer.alloc(kept.length * BS);
    const got = await again.get(kept, back);
    expect(got.count).toBe(kept.length);
    expect(back.equals(blocksFor(kept, BS))).toBe(true);
    const missing = await again.get(error.unwritten, Buffer.alloc(lost.size * BS));
    expect(missing.count).toBe(0);
    await again.close().catch(() => undefined); // the disk is still full
  });
});

describe('a filesystem without O_DIRECT', () => {
  it('refuses direct: true clearly and creates nothing', async () => {
    const at = mount('ramfs', 'mode=755');
    if (!at) return;
    const path = join(at, 'x.bin');
    const error = await openFile(path, { create: true }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'KVTIER_NOT_AVAILABLE', errno: 22 });
    expect((error as Error).message).toMatch(/O_DIRECT is not supported/);
    expect(existsSync(path)).toBe(false);
  });

  it("falls back to buffered I/O with direct: 'auto' and says so", async () => {
    const at = mount('ramfs', 'mode=755');
    if (!at) return;
    const file = await openFile(join(at, 'y.bin'), { create: true, direct: 'auto' });
    expect(file.direct).toBe(false);
    expect(file.directReason).toMatch(/O_DIRECT/);
    const engine = createEngine({ kind: 'threads', queueDepth: 2 });
    const data = randomBytes(10_000);
    expect(await engine.write(file, 3, data)).toBe(10_000);
    const back = Buffer.alloc(10_000);
    expect(await engine.read(file, 3, back)).toBe(10_000);
    expect(Buffer.compare(back, data)).toBe(0);
    await file.close();
    await engine.close();
  });
});

describe.each(engineKinds())('%s engine lifecycle', (kind: EngineKind) => {
  it('lets an idle process exit without close()', () => {
    const r = spawnSync(
      process.execPath,
      [`${fixtures}idle-exit.mjs`, join(dir.path, `idle-${kind}.bin`), kind],
      {
        encoding: 'utf8',
        timeout: 30_000,
      },
    );
    expect(r.signal).toBeNull();
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('done');
  });

  it('survives a worker thread terminated with I/O in flight', async () => {
    const worker = new Worker(`${fixtures}worker-io.mjs`, {
      workerData: { path: join(dir.path, `worker-${kind}.bin`), kind },
    });
    await new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
    });
    await worker.terminate();
    // The main thread's own addon instance still works afterwards.
    const engine = createEngine({ kind, queueDepth: 2 });
    const region = Region.allocate(4096);
    const path = join(dir.path, `after-${kind}.bin`);
    writeFileSync(path, randomBytes(4096));
    const file = await openFile(path);
    expect(await engine.read(file, 0, region)).toBe(4096);
    await Promise.all([file.close(), region.close()]);
    await engine.close();
  });
});
