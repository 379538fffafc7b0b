import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';

import { KvtierError, Warehouse } from '../../lib/index.js';
import { blockContent, checkBlock, fillBlock } from '../../lib/apps/demo/content.js';
import {
  blockBytesOf,
  defaultFileBytes,
  defaultHostBytes,
  readSavedConfig,
  writeSavedConfig,
} from '../../lib/apps/demo/config.js';
import { runDemo } from '../../lib/apps/demo/runner.js';
import { generateWorkload } from '../../lib/apps/demo/workload.js';
import { tempDir } from '../helpers.js';

const KEY_A = 'a'.repeat(64);
const KEY_B = 'b'.repeat(64);
const MiB = 2 ** 20;

const dirs: { remove(): void }[] = [];
afterAll(() => dirs.forEach((d) => d.remove()));
afterEach(() => vi.restoreAllMocks());
function dir(): string {
  const d = tempDir('kvtier-demo-unit-');
  dirs.push(d);
  return d.path;
}

describe('demo block content', () => {
  it('is a function of the key and the position', () => {
    const a = blockContent(KEY_A, 64 * 1024);
    expect(blockContent(KEY_A, 64 * 1024).equals(a)).toBe(true);
    expect(blockContent(KEY_B, 64 * 1024).equals(a)).toBe(false);
    // No two 4 KiB pages alike: a stale or shifted page is caught.
    const pages = new Set<string>();
    for (let p = 0; p < 16; p++) pages.add(a.subarray(p * 4096, (p + 1) * 4096).toString('hex'));
    expect(pages.size).toBe(16);
    // A shorter key is hashed, not refused.
    expect(blockContent('c'.repeat(32), 4096)).toHaveLength(4096);
  });

  it('checks a block byte for byte and points at the first wrong byte', () => {
    const bs = 8192;
    const buf = Buffer.alloc(3 * bs);
    fillBlock(KEY_A, buf, bs, bs);
    expect(checkBlock(KEY_A, buf, bs, bs)).toBe(-1);
    expect(checkBlock(KEY_B, buf, bs, bs)).toBe(0);
    buf[bs + 5000]! ^= 1;
    expect(checkBlock(KEY_A, buf, bs, bs)).toBe(5000);
  });
});

describe('demo sizing', () => {
  it('takes 1/16 of free memory for the host tier, at most 256 MiB, in whole blocks', () => {
    const bs = 256 * 1024;
    expect(defaultHostBytes(bs, 64 * 1024 * MiB).bytes).toBe(256 * MiB);
    expect(defaultHostBytes(bs, 1024 * MiB).bytes).toBe(64 * MiB);
    expect(defaultHostBytes(bs, 1000 * MiB).bytes % bs).toBe(0);
    expect(defaultHostBytes(bs, 1 * MiB).bytes).toBe(4 * bs);
  });

  it('gives the file tier 4 x host or room for the workload, within half the free disk', () => {
    const bs = MiB;
    expect(defaultFileBytes(bs, 64 * MiB, 10, 1e12).bytes).toBe(256 * MiB);
    expect(defaultFileBytes(bs, 64 * MiB, 1000, 1e12).bytes).toBe(1250 * MiB);
    expect(defaultFileBytes(bs, 64 * MiB, 1000, 200 * MiB).bytes).toBe(100 * MiB);
    expect(() => defaultFileBytes(bs, 64 * MiB, 10, MiB)).toThrow(KvtierError);
  });

  it('refuses a block that is too big and round-trips the saved config', async () => {
    expect(blockBytesOf(16, 16384)).toBe(256 * 1024);
    expect(() => blockBytesOf(16, 2 ** 30)).toThrow(/1 GiB/);
    const d = dir();
    expect(await readSavedConfig(d)).toBeUndefined();
    const c = {
      blockTokens: 16,
      kvBytesPerToken: 1024,
      blockBytes: 16384,
      hostBytes: MiB,
      fileBytes: 8 * MiB,
    };
    await writeSavedConfig(d, c);
    expect(await readSavedConfig(d)).toEqual(c);
  });
});

describe('runDemo', () => {
  const workload = generateWorkload({ seed: 3, requests: 25 });
  const base = { blockTokens: 16, blockBytes: 16 * 1024, hostBytes: 2 * MiB, fileBytes: 64 * MiB };

  it('verifies every block it reads and accounts hits by tier', async () => {
    const d = dir();
    const r = await runDemo({ ...base, dir: d, workload, batchBytes: 512 * 1024 });
    expect(r.requests).toBe(25);
    expect(r.warmStart).toBe(false);
    expect(r.hitBlocks).toBeGreaterThan(0);
    expect(r.verifiedBlocks).toBe(r.hitBlocks); // nothing corrupt, nothing broken
    expect(r.corruptBlocks).toBe(0);
    expect(r.hitRate).toBeGreaterThan(0);
    expect(r.hitRate).toBeLessThanOrEqual(1);
    expect(r.tiers.map((t) => t.name)).toEqual(['host', 'file']);
    expect(r.tiers.reduce((a, t) => a + t.served, 0)).toBe(r.hitBlocks);
    expect(r.tiers[1]!.served).toBeGreaterThan(0); // a 2 MiB host tier cannot hold it all
    expect(r.prefillTokensSaved).toBe(r.hitBlocks * 16);
    expect(r.bytesRead).toBe(r.verifiedBlocks * base.blockBytes);
    expect(r.computedBlocks).toBe(r.blocksAtEnd); // the file tier had room for every block

    // Reopened: the same workload is served from the file tier from its first request on.
    const again = await runDemo({ ...base, dir: d, workload });
    expect(again.warmStart).toBe(true);
    expect(again.blocksAtOpen).toBe(r.blocksAtEnd);
    expect(again.firstRequest!.byTier.file).toBe(again.firstRequest!.promptBlocks);
    expect(again.computedBlocks).toBe(0);
    expect(again.hitBlocks).toBe(again.promptBlocks);
  });

  it('fails with KVTIER_CORRUPT when a block comes back wrong', async () => {
    // eslint-disable-next-line @typescript-eslint/unbound-method -- called with apply(this)
    const realGet = Warehouse.prototype.get;
    let calls = 0;
    vi.spyOn(Warehouse.prototype, 'get').mockImplementation(async function (
      this: Warehouse,
      ...args: Parameters<Warehouse['get']>
    ) {
      const result = await realGet.apply(this, args);
      // The third read hands back one wrong byte, as a broken tier might.
      if (++calls === 3 && result.found[0]) (args[1] as Buffer)[100]! ^= 0x40;
      return result;
    });
    const d = dir();
    const failed = await runDemo({ ...base, dir: d, workload }).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(KvtierError);
    expect((failed as KvtierError).code).toBe('KVTIER_CORRUPT');
    expect((failed as KvtierError).message).toMatch(/wrong byte at offset 100/);
    // The warehouse was closed on the way out: the directory opens again.
    vi.restoreAllMocks();
    const r = await runDemo({
      ...base,
      dir: d,
      workload: generateWorkload({ seed: 3, requests: 2 }),
    });
    expect(r.warmStart).toBe(true);
  });

  it('stops when aborted', async () => {
    const controller = new AbortController();
    const d = dir();
    const failed = await runDemo({
      ...base,
      dir: d,
      workload,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.done === 2) controller.abort();
      },
    }).catch((e: unknown) => e);
    expect((failed as Error).name).toBe('AbortError');
  });
});
