import { spawnSync } from 'node:child_process';
import { existsSync, openSync, readFileSync, readSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { tempDir } from '../helpers.js';

const cli = fileURLToPath(new URL('../../dist/apps/cli/main.js', import.meta.url));

function run(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, 'demo', ...args], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

// 16 KiB blocks (16 tokens × 1 KiB): a 4 MiB host tier overflows, a 64 MiB file tier holds it all.
const SMALL = [
  '--requests',
  '40',
  '--host-bytes',
  '4MiB',
  '--file-bytes',
  '64MiB',
  '--kv-bytes-per-token',
  '1KiB',
];

interface TierJson {
  name: string;
  kind: string;
  hits: number;
  served: number;
  corrupt: number;
  capacityBlocks: number;
}
interface SummaryJson {
  requests: number;
  hitRate: number;
  tiers: TierJson[];
  verifiedBlocks: number;
  corruptBlocks: number;
  hitBlocks: number;
  promptBlocks: number;
  bytesMoved: number;
  seconds: number;
  gbps: number;
  prefillTokensSaved: number;
  warmStart: boolean;
  blocksAtOpen: number;
  firstRequest: { promptBlocks: number; hitBlocks: number; byTier: Record<string, number> };
  config: { dir: string; kept: boolean; blockBytes: number };
}

const dirs: { remove(): void }[] = [];
afterAll(() => dirs.forEach((d) => d.remove()));

function json(r: { status: number | null; stdout: string; stderr: string }): SummaryJson {
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as SummaryJson;
}

describe('kvtier demo', () => {
  it('runs a small workload, verifies every block and reports JSON only on stdout', () => {
    const s = json(run('--json', ...SMALL));
    expect(s.requests).toBe(40);
    expect(s.hitRate).toBeGreaterThan(0);
    expect(s.hitRate).toBeLessThanOrEqual(1);
    expect(s.tiers.map((t) => t.kind)).toEqual(['host', 'file']);
    expect(s.verifiedBlocks).toBeGreaterThan(0);
    expect(s.verifiedBlocks).toBe(s.hitBlocks);
    expect(s.corruptBlocks).toBe(0);
    expect(s.tiers[1]!.served).toBeGreaterThan(0);
    for (const k of ['bytesMoved', 'seconds', 'gbps', 'prefillTokensSaved'] as const) {
      expect(typeof s[k], k).toBe('number');
    }
    expect(s.prefillTokensSaved).toBe(s.hitBlocks * 16);
    expect(s.warmStart).toBe(false);
    expect(s.config.blockBytes).toBe(16 * 1024);
    // The temporary directory is gone.
    expect(s.config.kept).toBe(false);
    expect(existsSync(s.config.dir)).toBe(false);
  });

  it('starts warm from the file tier when rerun on the same --dir', () => {
    const d = tempDir('kvtier-demo-it-');
    dirs.push(d);
    const dir = join(d.path, 'wh');
    const first = json(run('--json', '--dir', dir, ...SMALL));
    expect(first.warmStart).toBe(false);
    expect(first.firstRequest.hitBlocks).toBe(0);

    // Sizes come from the directory: no size options this time.
    const second = json(run('--json', '--dir', dir, '--requests', '40'));
    expect(second.warmStart).toBe(true);
    expect(second.blocksAtOpen).toBeGreaterThan(0);
    expect(second.firstRequest.byTier.file).toBeGreaterThan(0);
    expect(second.firstRequest.hitBlocks).toBe(second.firstRequest.promptBlocks);
    expect(second.hitRate).toBeGreaterThan(first.hitRate);
    expect(second.verifiedBlocks).toBe(second.hitBlocks);
    expect(second.corruptBlocks).toBe(0);
  });

  it('drops and counts blocks corrupted on disk between runs, and still verifies the rest', () => {
    const d = tempDir('kvtier-demo-it-');
    dirs.push(d);
    const dir = join(d.path, 'wh');
    json(run('--json', '--dir', dir, ...SMALL));
    const meta = JSON.parse(readFileSync(join(dir, 'kvtier.meta.json'), 'utf8')) as {
      payloadOffset: number;
      slotBytes: number;
      slots: number;
    };
    const fd = openSync(join(dir, 'blocks.kvt'), 'r+');
    try {
      const byte = Buffer.alloc(1);
      for (let slot = 0; slot < 64; slot += 4) {
        const at = meta.payloadOffset + slot * meta.slotBytes + 777;
        readSync(fd, byte, 0, 1, at);
        byte[0]! ^= 0xff;
        writeSync(fd, byte, 0, 1, at);
      }
    } finally {
      closeSync(fd);
    }
    const s = json(run('--json', '--dir', dir, '--requests', '40'));
    expect(s.warmStart).toBe(true);
    expect(s.corruptBlocks).toBeGreaterThan(0);
    expect(s.tiers[1]!.corrupt).toBe(s.corruptBlocks);
    expect(s.verifiedBlocks).toBeGreaterThan(0);
  });

  it('prints sizes, then a table with hit rates, bytes moved and blocks verified', () => {
    const r = run(...SMALL);
    expect(r.status, r.stderr).toBe(0);
    for (const word of [
      'host',
      'file',
      'requests',
      'hit rate',
      'GB moved',
      'throughput',
      'blocks verified',
      'corrupt blocks',
      'prefill tokens saved',
      'warm start',
    ]) {
      expect(r.stdout).toContain(word);
    }
    expect(r.stdout).toMatch(/block\s+16 tokens × 1 KiB\/token = 16 KiB/);
  });

  it('refuses bad options with KVTIER_BAD_ARGUMENT and a non-zero exit', () => {
    for (const args of [
      ['--requests', '0'],
      ['--requests', 'many'],
      ['--seed', 'x'],
      ['--host-bytes', '1KiB', '--kv-bytes-per-token', '1KiB'],
      ['--file-bytes', 'lots'],
      ['--block-tokens', '0'],
      ['--kv-bytes-per-token', '0'],
    ]) {
      const r = run('--json', ...args);
      expect(r.status, args.join(' ')).not.toBe(0);
      expect(r.stderr, args.join(' ')).toContain('KVTIER_BAD_ARGUMENT');
      expect(r.stderr).not.toMatch(/\n\s+at /); // no stack
      expect(r.stdout).toBe('');
    }
  });
});
