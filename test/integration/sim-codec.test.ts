/**
 * `kvtier sim --codec`: the same tier bytes hold more encoded blocks, as many more as the codec's
 * encoded size (docs/codecs.md's formulas) says, and what that buys in hit rate and load time.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { tempDir } from '../helpers.js';

const cli = fileURLToPath(new URL('../../dist/apps/cli/main.js', import.meta.url));
const fixture = fileURLToPath(
  new URL('../fixtures/traces/conversation-head400.jsonl', import.meta.url),
);

function run(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, 'sim', '--trace', fixture, ...args], {
    encoding: 'utf8',
    timeout: 300_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface Row {
  codec: string;
  encodedBytes: number;
  ratio: number;
  decodeGBps?: number;
  tiers: { name: string; encoded: boolean; capacity: number; capacityBytes: number }[];
  sim?: { hitRate: { prefix: number; any: number }; tiers: { hits: { any: number } }[] };
  encodedBytesRead?: number;
  timed?: {
    requests: number;
    hitRate: { warehouse: number };
    ttft: { warehouse: { mean: number } };
    loadedBytes: number[];
  };
}
interface Result {
  kind: string;
  blockBytes: number;
  blockTokens: number;
  rows: Row[];
}

function json(...args: string[]): Result {
  const r = run(...args, '--json');
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Result;
}

// Llama-3-8B KV, bf16: 32 layers, 8 KV heads, head dim 128; the fixture's blocks are 512 tokens.
const L = 32;
const H = 8;
const D = 128;
const T = 512;
const HEADER = 32;
const ELEMENTS = 2 * L * T * H * D;
// docs/codecs.md's bytes per block, header added; kivi's default group is 32.
const expected: Record<string, number> = {
  none: ELEMENTS * 2,
  'fp8-e4m3': HEADER + 8 * L * H + ELEMENTS,
  int8: HEADER + 4 * L * (H * D + T * H) + ELEMENTS,
  kivi4: HEADER + 4 * L * (H * D + (T * H * D) / 32) + (ELEMENTS * 4) / 8,
  kivi2: HEADER + 4 * L * (H * D + (T * H * D) / 32) + (ELEMENTS * 2) / 8,
};
const ALL = 'none,fp8-e4m3,int8,kivi4,kivi2';

describe('kvtier sim --codec', () => {
  it('scales the encoded tiers by blockBytes / encodedBytes at the same bytes', () => {
    const r = json('--tiers', 'gpu=256MiB,host=1GiB,file=20GiB', '--codec', ALL, '--policy', 'lru');
    expect(r.kind).toBe('codec');
    expect(r.blockTokens).toBe(T);
    expect(r.blockBytes).toBe(64 * 2 ** 20);
    expect(r.rows.map((x) => x.codec)).toEqual(ALL.split(','));
    for (const row of r.rows) {
      expect(row.encodedBytes, row.codec).toBe(expected[row.codec]);
      expect(row.ratio).toBeCloseTo(row.encodedBytes / r.blockBytes, 12);
      // gpu and host stay full precision; the file tier's 20 GiB hold floor(bytes / encoded).
      expect(row.tiers.map((t) => t.encoded)).toEqual([false, false, true]);
      expect(row.tiers.map((t) => t.capacity)).toEqual([
        4,
        16,
        Math.floor((20 * 2 ** 30) / expected[row.codec]!),
      ]);
      expect(row.tiers[2]!.capacityBytes).toBeLessThanOrEqual(20 * 2 ** 30);
      // Bytes read from the file tier are its hits at the encoded size.
      expect(row.encodedBytesRead).toBe(row.sim!.tiers[2]!.hits.any * row.encodedBytes);
    }
    expect(r.rows.find((x) => x.codec === 'kivi2')!.tiers[2]!.capacity).toBe(2022);
  });

  it('counts a capacity in blocks or as a share in full-size blocks, and --codec-tiers picks tiers', () => {
    const r = json('--tiers', 'host=10,file=2%', '--codec', 'none,kivi2', '--codec-tiers', 'host');
    const [none, kivi2] = r.rows;
    expect(none!.tiers.map((t) => t.encoded)).toEqual([true, false]);
    expect(kivi2!.tiers[0]!.capacity).toBe(Math.floor((10 * r.blockBytes) / expected.kivi2!));
    expect(kivi2!.tiers[1]!.capacity).toBe(none!.tiers[1]!.capacity);
  });

  it('with LRU, a smaller codec never lowers the hit rate at the same bytes', () => {
    // One LRU cache: its contents at capacity c are a subset of those at c' > c (the stack
    // property), so every hit at c is a hit at c'. Hierarchies and other policies need not keep it.
    const r = json('--capacity', '3%', '--codec', ALL, '--policy', 'lru');
    const rows = [...r.rows].sort((a, b) => b.ratio - a.ratio);
    for (let i = 1; i < rows.length; i++) {
      expect(rows[i]!.tiers[0]!.capacity).toBeGreaterThan(rows[i - 1]!.tiers[0]!.capacity);
      expect(rows[i]!.sim!.hitRate.prefix).toBeGreaterThanOrEqual(rows[i - 1]!.sim!.hitRate.prefix);
      expect(rows[i]!.sim!.hitRate.any).toBeGreaterThanOrEqual(rows[i - 1]!.sim!.hitRate.any);
    }
    // And it is not a tie all the way: kivi2's 6x capacity finds more on this trace.
    expect(rows.at(-1)!.sim!.hitRate.any).toBeGreaterThan(rows[0]!.sim!.hitRate.any);
  });

  it('prices a timed load as stored bytes at the tier rate plus the decode at the given rate', () => {
    const dir = tempDir();
    try {
      // A bench codec report with known decode rates (int8's row under the bench's name).
      const rates = join(dir.path, 'codec-rates.json');
      writeFileSync(
        rates,
        JSON.stringify({
          bench: 'codec',
          speed: [
            { codec: 'fp8-e4m3', decodeGBps: 5 },
            { codec: 'int8 (K/channel, V/token)', decodeGBps: 8 },
            { codec: 'kivi2', decodeGBps: 1 },
          ],
        }),
      );
      // The file tier holds every block with any codec: the same hits, so only pricing differs.
      const args = ['--tiers', 'gpu=1,file=100%', '--timed', '--tier-rates', 'file=2:0.1'];
      const r = json(...args, '--codec', 'none,fp8-e4m3,int8,kivi2', '--decode-rates', rates);
      const none = r.rows[0]!;
      const fileBytes = none.timed!.loadedBytes[1]!;
      expect(fileBytes).toBeGreaterThan(0);
      expect(none.timed!.loadedBytes[0]).toBe(0);
      for (const row of r.rows.slice(1)) {
        const dec = { 'fp8-e4m3': 5, int8: 8, kivi2: 1 }[row.codec]!;
        expect(row.decodeGBps).toBe(dec);
        const t = row.timed!;
        expect(t.hitRate.warehouse).toBe(none.timed!.hitRate.warehouse);
        expect(t.loadedBytes[1]).toBeCloseTo(fileBytes * row.ratio, 0);
        // Mean TTFT moves by (read fewer bytes at 2 GB/s, then decode all of them) per request.
        const deltaMs =
          ((fileBytes * (row.ratio - 1)) / 2e6 + fileBytes / (dec * 1e6)) / t.requests;
        expect(t.ttft.warehouse.mean - none.timed!.ttft.warehouse.mean).toBeCloseTo(deltaMs, 6);
      }
      // --decode-gbps overrides the file's rate.
      const o = json(
        ...args,
        '--codec',
        'kivi2',
        '--decode-rates',
        rates,
        '--decode-gbps',
        'kivi2=3',
      );
      expect(o.rows[0]!.decodeGBps).toBe(3);
    } finally {
      dir.remove();
    }
  });

  it('refuses bad input with a message and a code', () => {
    const cases: [string[], RegExp][] = [
      [['--codec', 'zstd'], /--codec zstd: expected a list of none, fp8-e4m3/],
      [['--codec', 'none,none'], /none given twice/],
      [['--codec', 'int8', '--block-bytes', '1000'], /--codec needs the KV layout of a --model/],
      [['--codec-tiers', 'file'], /--codec-tiers needs --codec/],
      [['--codec', 'int8', '--decode-gbps', 'int8=2'], /they need --timed/],
      [['--tiers', 'gpu=1,host=2', '--codec', 'int8'], /every tier is gpu or host/],
      [['--tiers', 'gpu=1,file=2', '--codec', 'int8', '--codec-tiers', 'nvme'], /no such tier/],
      [
        ['--tiers', 'gpu=1,file=2', '--codec', 'int8', '--timed', '--decode-gbps', 'int8=0'],
        /--decode-gbps int8=0/,
      ],
      [
        ['--codec', 'kivi2', '--timed', '--decode-rates', fixture],
        /cannot read decode rates|not a kvtier bench codec/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = run(...args);
      expect(r.status, args.join(' ')).not.toBe(0);
      expect(r.stderr, args.join(' ')).toMatch(message);
      expect(r.stderr).toMatch(/\[KVTIER_BAD_ARGUMENT\]/);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
  });

  it('prints one markdown row per codec', () => {
    const r = run('--tiers', 'gpu=256MiB,host=1GiB,file=20GiB', '--codec', 'none,kivi2');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      /\| codec \| bytes\/block \| ratio \| gpu blocks \| host blocks \| file\* blocks/,
    );
    expect(r.stdout).toMatch(/\| none \| 67,108,864 \| 1\.000 \| 4 \| 16 \| 320 \|/);
    expect(r.stdout).toMatch(/\| kivi2 \| 10,616,864 \| 0\.158 \| 4 \| 16 \| 2,022 \|/);
  });
});
