import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { warehouseBenchOptions } from '../../lib/apps/cli/bench.js';
import {
  assertSameChain,
  benchTokens,
  chainHexWithCreateHash,
  chainKeysWithCreateHash,
  mapPrefix,
  validateKeysBenchOptions,
} from '../../lib/apps/bench/keys-bench.js';
import {
  pipeline,
  runWarehouseBench,
  validateWarehouseBenchOptions,
  type WarehouseBenchOptions,
  type WarehouseBenchReport,
} from '../../lib/apps/bench/warehouse-bench.js';
import { formatWarehouseBench, warehouseBenchJson } from '../../lib/apps/bench/warehouse-report.js';
import { chainKeys, namespaceRoot } from '../../lib/keys/keys.js';
import { badArgument, tempDir } from '../helpers.js';

const KiB = 1024;
const MiB = 2 ** 20;
const cli = fileURLToPath(new URL('../../dist/apps/cli/main.js', import.meta.url));

describe('the createHash peer computes the same chain as chainKeys', () => {
  it.each([
    [4096, 16, ''],
    [4099, 16, ''], // a partial last block gets no key
    [1000, 1, 'tenant-a'],
    [131072, 16, ''],
  ])('%i tokens at %i per block, namespace %j', (count, blockTokens, namespace) => {
    const tokens = benchTokens(count);
    const kvtier = chainKeys(tokens, { blockTokens, namespace });
    const peer = chainKeysWithCreateHash(tokens, blockTokens, namespaceRoot(namespace));
    expect(peer.length).toBe(Math.floor(count / blockTokens) * 32);
    expect(kvtier.bytes.equals(peer)).toBe(true);
    expect(() => assertSameChain(kvtier.bytes, peer, 'test')).not.toThrow();
    expect(chainHexWithCreateHash(tokens, blockTokens, namespaceRoot(namespace))).toEqual(
      kvtier.keys(),
    );
  });

  it('continues from a parent key as chainKeys does', () => {
    const tokens = benchTokens(256);
    const first = chainKeys(tokens.subarray(0, 128), { blockTokens: 16 });
    const parent = first.bytes.subarray(first.bytes.length - 32);
    const rest = chainKeysWithCreateHash(tokens.subarray(128), 16, Buffer.from(parent));
    expect(
      Buffer.concat([first.bytes, rest]).equals(chainKeys(tokens, { blockTokens: 16 }).bytes),
    ).toBe(true);
  });

  it('refuses to compare chains that differ', () => {
    const a = chainKeys(benchTokens(64), { blockTokens: 16 }).bytes;
    const b = Buffer.from(a);
    b[5]! ^= 1;
    expect(() => assertSameChain(a, b, 'flipped')).toThrow(/disagree/);
  });
});

describe('mapPrefix', () => {
  it('counts leading keys the map holds', () => {
    const map = new Map([
      ['a', 0],
      ['b', 1],
    ]);
    expect(mapPrefix(map, ['a', 'b', 'c', 'a'])).toBe(2);
    expect(mapPrefix(map, ['c', 'a'])).toBe(0);
    expect(mapPrefix(map, [])).toBe(0);
  });
});

describe('pipeline', () => {
  it('covers every item once, in calls of at most `batch`, with lanes numbered from 0', async () => {
    const seen: [number, number, number][] = [];
    await pipeline(10, 4, 2, async (from, to, lane) => {
      seen.push([from, to, lane]);
      await Promise.resolve();
    });
    expect(seen.map(([f, t]) => [f, t]).sort((x, y) => x[0]! - y[0]!)).toEqual([
      [0, 4],
      [4, 8],
      [8, 10],
    ]);
    expect(new Set(seen.map(([, , l]) => l))).toEqual(new Set([0, 1]));
  });
});

describe('bench warehouse options', () => {
  const dir = tempDir();
  const ok: WarehouseBenchOptions = { dir: dir.path, size: 4 * MiB, blockSizes: [MiB] };

  it('fills in the defaults', () => {
    const o = validateWarehouseBenchOptions({ dir: dir.path });
    expect(o).toMatchObject({
      size: 512 * MiB,
      blockSizes: [256 * KiB, MiB, 4 * MiB],
      batch: 32,
      inFlight: 2,
      queueDepth: 32,
      reps: 5,
      sections: { io: true, chainKeys: true, lookup: true },
      keys: { tokens: 131072, blockTokens: 16, lookupKeys: 256 },
    });
    expect(o.engine).toBeUndefined();
  });

  it.each<[string, WarehouseBenchOptions, RegExp]>([
    ['a zero batch', { batch: 0 }, /batch/],
    ['a batch past 4096', { batch: 5000 }, /batch/],
    ['zero calls in flight', { inFlight: 0 }, /in-flight/],
    ['a fractional in-flight', { inFlight: 1.5 }, /in-flight/],
    ['an unknown engine', { engine: 'spdk' as never }, /engine must be/],
    ['a block size that is not a multiple of 4096', { blockSizes: [6000] }, /multiple of 4096/],
    [
      'a size that is not a multiple of the block size',
      { size: 3 * MiB, blockSizes: [2 * MiB] },
      /not a multiple/,
    ],
    ['zero reps', { reps: 0 }, /reps/],
    ['a zero queue depth', { queueDepth: 0 }, /queue depth/],
    ['staging past 2 GiB', { blockSizes: [64 * MiB], size: 64 * MiB, batch: 64 }, /staging/],
    ['every section off', { io: false, chainKeys: false, lookup: false }, /nothing to measure/],
    ['fewer tokens than a block', { keys: { tokens: 8, blockTokens: 16 } }, /at least one block/],
    ['zero lookup keys', { keys: { lookupKeys: 0 } }, /lookup keys/],
    ['zero chain samples', { keys: { chainSamples: 0 } }, /chain samples/],
    ['a missing directory', { dir: '/nonexistent/kvtier' }, /does not exist/],
  ])('refuses %s', (_what, change, message) => {
    expect(badArgument(() => validateWarehouseBenchOptions({ ...ok, ...change }))).toMatch(message);
  });

  it('validates the key options on their own too', () => {
    expect(validateKeysBenchOptions({})).toMatchObject({ tokens: 131072, lookupIterations: 512 });
    expect(badArgument(() => validateKeysBenchOptions({ blockTokens: 0 }))).toMatch(/block tokens/);
  });

  it('parses the command line', () => {
    const base = {
      size: '512MiB',
      blockSizes: '256KiB,1MiB,4MiB',
      batch: '32',
      inFlight: '2',
      queueDepth: '32',
      reps: '5',
      tokens: '131072',
      blockTokens: '16',
      chainSamples: '201',
      lookupKeys: '256',
      lookupSamples: '51',
      io: true,
      chainKeys: true,
      lookup: false,
    };
    expect(warehouseBenchOptions({ ...base, engine: 'threads', dir: '/tmp' })).toMatchObject({
      dir: '/tmp',
      size: 512 * MiB,
      blockSizes: [256 * KiB, MiB, 4 * MiB],
      batch: 32,
      inFlight: 2,
      engine: 'threads',
      lookup: false,
      keys: { tokens: 131072, blockTokens: 16, lookupKeys: 256 },
    });
    expect(badArgument(() => warehouseBenchOptions({ ...base, batch: 'x' }))).toMatch(/batch/);
    expect(badArgument(() => warehouseBenchOptions({ ...base, inFlight: '-2' }))).toMatch(
      /in-flight/,
    );
    expect(badArgument(() => warehouseBenchOptions({ ...base, size: 'big' }))).toMatch(/size/);
    expect(badArgument(() => warehouseBenchOptions({ ...base, engine: 'spdk' }))).toMatch(/engine/);
  });

  it('leaves the directory as it found it', () => {
    expect(readdirSync(dir.path)).toEqual([]);
    dir.remove();
  });
});

const tiny: WarehouseBenchOptions = {
  size: MiB,
  blockSizes: [256 * KiB],
  batch: 2,
  inFlight: 2,
  queueDepth: 4,
  reps: 1,
  keys: { tokens: 1024, chainSamples: 3, lookupKeys: 16, lookupSamples: 2, lookupIterations: 4 },
};

describe('runWarehouseBench (shape only, no timing assertions)', () => {
  it('reports every section with ratio columns, and removes its files', async () => {
    const dir = tempDir();
    try {
      const report = await runWarehouseBench({ ...tiny, dir: dir.path });
      const io = report.rows.filter((r) => r.section === 'io');
      expect(io.map((r) => `${r.op} ${r.blockSize}`)).toEqual(['put 262144', 'get 262144']);
      for (const r of io) {
        expect(Object.keys(r).sort()).toEqual(
          [
            'batch',
            'blockSize',
            'blocks',
            'crcPeerGbps',
            'crcRatio',
            'engine',
            'gbps',
            'inFlight',
            'meetsTarget',
            'op',
            'peer',
            'peerGbps',
            'queueDepth',
            'ratio',
            'section',
            'target',
          ].sort(),
        );
        expect(r).toMatchObject({
          blocks: 4,
          batch: 2,
          inFlight: 2,
          queueDepth: 4,
          peer: 'engine',
        });
        expect(r.gbps).toBeGreaterThan(0);
        expect(r.peerGbps).toBeGreaterThan(0);
        expect(r.ratio).toBeCloseTo(r.gbps / r.peerGbps, 9);
        expect(r.meetsTarget).toBe(r.ratio >= r.target);
        // The row is this report's own passes (one repetition each): the warehouse's and the
        // engine's, same op and block size, each moving the whole configured size.
        const passes = (tool: string): { gbps: number; ms: number }[] =>
          report.runs.filter(
            (x) => x.tool === tool && x.op === r.op && x.blockSize === r.blockSize,
          );
        const [mine, theirs, summed] = [
          passes('warehouse'),
          passes('engine'),
          passes('engine+crc'),
        ];
        expect(mine).toHaveLength(1);
        expect(theirs).toHaveLength(1);
        expect(summed).toHaveLength(1);
        expect(r.gbps).toBe(mine[0]!.gbps);
        expect(r.peerGbps).toBe(theirs[0]!.gbps);
        expect(r.crcPeerGbps).toBe(summed[0]!.gbps);
        expect(r.crcRatio).toBeCloseTo(r.gbps / r.crcPeerGbps, 9);
        for (const x of [...mine, ...theirs, ...summed]) {
          expect((x.gbps * 1e9 * x.ms) / 1e3 / tiny.size!).toBeCloseTo(1, 9);
        }
        expect(r.blocks * r.blockSize).toBe(tiny.size);
      }
      const chain = report.rows.filter((r) => r.section === 'chainKeys');
      expect(chain.map((r) => r.variant)).toEqual(['bytes', 'hex', 'number[]']);
      for (const r of chain) {
        expect(r).toMatchObject({ tokens: 1024, blockTokens: 16, keys: 64, targetMs: 2 });
        expect(r.ratio).toBeCloseTo(r.peerMs / r.ms, 9);
      }
      const lookup = report.rows.filter((r) => r.section === 'lookup');
      expect(lookup.map((r) => r.variant)).toEqual([
        'warehouse.lookup(KeyChain)',
        'warehouse.lookup(string[])',
        'BlockIndex.prefix',
      ]);
      for (const r of lookup) {
        expect(r).toMatchObject({ keys: 16, peer: 'Map', targetKeysPerSec: 5e6 });
        expect(r.ratio).toBeCloseTo(r.keysPerSec / r.peerKeysPerSec, 9);
      }
      // Alternating passes: one warehouse, one engine and one engine+crc run per op and
      // repetition, the warehouse's next to the plain engine's.
      expect(report.runs.map((r) => `${r.tool} ${r.op}`)).toEqual([
        'warehouse put',
        'engine put',
        'engine+crc put',
        'warehouse get',
        'engine get',
        'engine+crc get',
      ]);
      expect(report.load.start).toHaveLength(3);
      expect(report.load.end).toHaveLength(3);
      expect(report.io?.method).toMatch(/CRC-32C/);
      const json = JSON.parse(warehouseBenchJson(report)) as WarehouseBenchReport;
      expect(json.rows).toEqual(report.rows);
      expect(formatWarehouseBench(report)).toMatch(/warehouse GB\/s/);
      expect(formatWarehouseBench(report)).toMatch(/engine\+crc GB\/s/);
      expect(readdirSync(dir.path)).toEqual([]);
    } finally {
      dir.remove();
    }
  });

  it('runs only the sections asked for', async () => {
    const report = await runWarehouseBench({ ...tiny, io: false, lookup: false });
    expect(new Set(report.rows.map((r) => r.section))).toEqual(new Set(['chainKeys']));
    expect(report.io).toBeUndefined();
    expect(report.runs).toEqual([]);
  });
});

describe('kvtier bench warehouse (CLI)', () => {
  function run(...args: string[]): { status: number | null; stdout: string; stderr: string } {
    const r = spawnSync(process.execPath, [cli, 'bench', 'warehouse', ...args], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  it('prints bad input as message and code, and exits non-zero', () => {
    for (const args of [
      ['--batch', '0'],
      ['--in-flight', 'x'],
      ['--block-sizes', '1000'],
      ['--dir', '/nonexistent/kvtier'],
      ['--no-io', '--no-chain-keys', '--no-lookup'],
    ]) {
      const r = run(...args);
      expect(r.status, args.join(' ')).not.toBe(0);
      expect(r.stderr).toMatch(/^kvtier: .+ \[KVTIER_BAD_ARGUMENT\]\n$/);
      expect(r.stdout).toBe('');
    }
  });

  it('prints nothing but JSON on stdout with --json', () => {
    const dir = tempDir();
    try {
      const r = run(
        '--dir',
        dir.path,
        '--size',
        '1MiB',
        '--block-sizes',
        '256KiB',
        '--batch',
        '2',
        '--reps',
        '1',
        '--tokens',
        '512',
        '--chain-samples',
        '3',
        '--lookup-keys',
        '8',
        '--lookup-samples',
        '2',
        '--json',
      );
      expect(r.status, r.stderr).toBe(0);
      const report = JSON.parse(r.stdout) as WarehouseBenchReport;
      expect(new Set(report.rows.map((x) => x.section))).toEqual(
        new Set(['io', 'chainKeys', 'lookup']),
      );
      expect(readdirSync(dir.path)).toEqual([]);
    } finally {
      dir.remove();
    }
  });
});
