import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { fileBenchOptions } from '../../lib/apps/cli/bench.js';
import {
  runFileBench,
  summarize,
  validateFileBenchOptions,
  type FileBenchOptions,
  type FileBenchReport,
  type FileBenchRun,
} from '../../lib/apps/bench/file-bench.js';
import { findFio } from '../../lib/apps/bench/fio.js';
import { median } from '../../lib/apps/bench/stats.js';
import { fileBenchJson, formatFileBench } from '../../lib/apps/bench/report.js';
import { badArgument, prerequisite, tempDir } from '../helpers.js';

const MiB = 2 ** 20;
const cli = fileURLToPath(new URL('../../dist/apps/cli/main.js', import.meta.url));

describe('bench file options', () => {
  const dir = tempDir();
  const ok: FileBenchOptions = { dir: dir.path, size: 4 * MiB, blockSizes: [MiB], queueDepth: 4 };

  it('fills in the defaults', () => {
    const o = validateFileBenchOptions({ dir: dir.path });
    expect(o).toMatchObject({ size: 2 ** 30, blockSizes: [MiB], queueDepth: 32, reps: 3 });
    expect(o.engines).toBeUndefined();
  });

  it.each<[string, FileBenchOptions, RegExp]>([
    ['a zero size', { size: 0 }, /size must be a positive integer/],
    ['a negative queue depth', { queueDepth: -1 }, /queue depth must be a positive integer/],
    ['a zero queue depth', { queueDepth: 0 }, /queue depth/],
    ['a fractional queue depth', { queueDepth: 1.5 }, /queue depth/],
    ['a queue depth past 4096', { queueDepth: 5000 }, /at most 4096/],
    ['a zero block size', { blockSizes: [0] }, /block size must be a positive integer/],
    ['a block size that is not a multiple of 4096', { blockSizes: [6000] }, /multiple of 4096/],
    [
      'a size that is not a multiple of the block size',
      { size: 3 * MiB, blockSizes: [2 * MiB] },
      /not a multiple of the block size/,
    ],
    ['no block size', { blockSizes: [] }, /at least one block size/],
    ['zero reps', { reps: 0 }, /reps/],
    ['an unknown engine', { engines: ['spdk' as never] }, /engine must be/],
    ['a missing directory', { dir: '/nonexistent/kvtier' }, /does not exist/],
    ['a file for a directory', { dir: '/etc/hostname' }, /not a directory/],
    ['an unwritable directory', { dir: '/proc' }, /not writable/],
  ])('refuses %s', (_what, change, message) => {
    expect(badArgument(() => validateFileBenchOptions({ ...ok, ...change }))).toMatch(message);
  });

  it('parses the command line', () => {
    const base = {
      size: '1GiB',
      blockSize: '1MiB',
      queueDepth: '32',
      reps: '3',
      fio: true,
      nodeFs: true,
    };
    expect(
      fileBenchOptions({ ...base, blockSizes: '256KiB,4MiB', engine: 'threads' }),
    ).toMatchObject({
      size: 2 ** 30,
      blockSizes: [256 * 1024, 4 * MiB],
      queueDepth: 32,
      engines: ['threads'],
    });
    expect(fileBenchOptions({ ...base, fio: false }).fio).toBe(false);
    expect(fileBenchOptions({ ...base, fio: '/opt/fio' }).fio).toBe('/opt/fio');
    expect(badArgument(() => fileBenchOptions({ ...base, queueDepth: '8x' }))).toMatch(
      /queue depth/,
    );
    expect(badArgument(() => fileBenchOptions({ ...base, reps: '-1' }))).toMatch(/reps/);
    expect(badArgument(() => fileBenchOptions({ ...base, size: 'big' }))).toMatch(/size/);
    expect(badArgument(() => fileBenchOptions({ ...base, engine: 'spdk' }))).toMatch(/engine/);
  });

  it('leaves the directory as it found it', () => {
    expect(readdirSync(dir.path)).toEqual([]);
    dir.remove();
  });
});

describe('summarize', () => {
  it('takes medians per measurement and makes one row per peer', () => {
    const run = (tool: FileBenchRun['tool'], gbps: number, engine?: 'io_uring'): FileBenchRun => ({
      tool,
      op: 'read',
      pattern: 'seq',
      ...(engine ? { engine } : {}),
      blockSize: MiB,
      rep: 0,
      gbps,
      ms: 1,
    });
    const { rows, kvtier } = summarize(
      [
        run('kvtier', 1, 'io_uring'),
        run('kvtier', 3, 'io_uring'),
        run('kvtier', 2, 'io_uring'),
        run('fio', 4, 'io_uring'),
        run('node-fs', 1),
      ],
      ['io_uring'],
      [MiB],
      8,
    );
    expect(kvtier).toEqual([
      { op: 'read', pattern: 'seq', engine: 'io_uring', blockSize: MiB, queueDepth: 8, gbps: 2 },
    ]);
    expect(rows).toEqual([
      {
        op: 'read',
        pattern: 'seq',
        engine: 'io_uring',
        blockSize: MiB,
        queueDepth: 8,
        gbps: 2,
        peer: 'fio',
        peerGbps: 4,
        ratio: 0.5,
      },
      {
        op: 'read',
        pattern: 'seq',
        engine: 'io_uring',
        blockSize: MiB,
        queueDepth: 8,
        gbps: 2,
        peer: 'node-fs',
        peerGbps: 1,
        ratio: 2,
      },
    ]);
  });
});

const fio = findFio();
const haveFio = prerequisite('path' in fio, 'fio is not installed (apt-get install fio)');

function checkRows(report: FileBenchReport, peers: string[]): void {
  const ops = ['write seq', 'write rand', 'read seq', 'read rand'];
  for (const engine of report.engines) {
    for (const opPattern of ops) {
      for (const peer of peers) {
        const row = report.rows.find(
          (r) => `${r.op} ${r.pattern}` === opPattern && r.engine === engine && r.peer === peer,
        );
        expect(row, `${opPattern} ${engine} ${peer}`).toBeDefined();
        expect(Object.keys(row ?? {}).sort()).toEqual(
          [
            'blockSize',
            'engine',
            'gbps',
            'op',
            'pattern',
            'peer',
            'peerGbps',
            'queueDepth',
            'ratio',
          ].sort(),
        );
        expect(row?.gbps).toBeGreaterThan(0);
        expect(row?.peerGbps).toBeGreaterThan(0);
        expect(row?.ratio).toBeCloseTo((row?.gbps ?? 0) / (row?.peerGbps ?? 1), 9);
        // Each figure is the median of this report's own passes: kvtier's on this engine, the
        // peer's on the same op, pattern and block size.
        const passes = (tool: string): FileBenchRun[] =>
          report.runs.filter(
            (r) =>
              r.tool === tool &&
              `${r.op} ${r.pattern}` === opPattern &&
              r.blockSize === row?.blockSize &&
              (tool === 'node-fs' || r.engine === engine),
          );
        const mine = passes('kvtier');
        const theirs = passes(peer);
        expect(mine).toHaveLength(report.reps);
        expect(theirs).toHaveLength(report.reps);
        expect(row?.gbps).toBe(median(mine.map((r) => r.gbps)));
        expect(row?.peerGbps).toBe(median(theirs.map((r) => r.gbps)));
      }
    }
  }
  // kvtier and node-fs time their own passes: rate × time is the whole file, every pass.
  for (const run of report.runs.filter((r) => r.tool !== 'fio')) {
    expect((run.gbps * 1e9 * run.ms) / 1e3 / report.file.size).toBeCloseTo(1, 9);
  }
  const perEngine = peers.includes('fio') ? 2 : 1; // kvtier, and fio mirroring each engine
  const nodeFs = peers.includes('node-fs') ? 1 : 0;
  expect(report.runs).toHaveLength(
    report.reps *
      report.blockSizes.length *
      ops.length *
      (report.engines.length * perEngine + nodeFs),
  );
  expect(report.rows.length).toBe(
    report.blockSizes.length * report.engines.length * ops.length * peers.length,
  );
}

describe('runFileBench', () => {
  it('measures kvtier next to node-fs without fio, and removes its files', async () => {
    const dir = tempDir();
    try {
      const notices: string[] = [];
      const report = await runFileBench({
        dir: dir.path,
        size: 4 * MiB,
        blockSizes: [MiB],
        queueDepth: 4,
        reps: 1,
        engines: ['threads'],
        fio: false,
        onNotice: (m) => notices.push(m),
      });
      expect(report.fioMissing).toMatch(/no-fio/);
      expect(notices.join()).toMatch(/no-fio/);
      expect(report.fio).toBeUndefined();
      checkRows(report, ['node-fs']);
      expect(report.kvtier).toHaveLength(4);
      expect(report.file.direct).toBe(true);
      expect(formatFileBench(report)).toMatch(/no fio rows/);
      expect(readdirSync(dir.path)).toEqual([]);
    } finally {
      dir.remove();
    }
  });

  it.runIf(haveFio)('measures both engines next to fio and node-fs', async () => {
    const dir = tempDir();
    try {
      const report = await runFileBench({
        dir: dir.path,
        size: 8 * MiB,
        blockSizes: [256 * 1024, MiB],
        queueDepth: 4,
        reps: 1,
      });
      expect(report.fio?.version).toMatch(/^fio-/);
      expect(report.fioMissing).toBeUndefined();
      expect(report.blockSizes).toEqual([256 * 1024, MiB]);
      checkRows(report, ['fio', 'node-fs']);
      const json = JSON.parse(fileBenchJson(report)) as FileBenchReport;
      expect(json.rows).toEqual(report.rows);
      expect(formatFileBench(report)).toMatch(/kvtier GB\/s/);
      expect(readdirSync(dir.path)).toEqual([]);
    } finally {
      dir.remove();
    }
  });
});

describe('kvtier bench file (CLI)', () => {
  function run(...args: string[]): { status: number | null; stdout: string; stderr: string } {
    const r = spawnSync(process.execPath, [cli, 'bench', 'file', ...args], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  it('prints bad input as message and code, and exits non-zero', () => {
    for (const args of [
      ['--block-size', '1000'],
      ['--size', '3MiB', '--block-size', '2MiB'],
      ['--queue-depth', '0'],
      ['--dir', '/nonexistent/kvtier'],
    ]) {
      const r = run(...args);
      expect(r.status, args.join(' ')).not.toBe(0);
      expect(r.stderr).toMatch(/^kvtier: .+ \[KVTIER_BAD_ARGUMENT\]\n$/);
      expect(r.stdout).toBe('');
    }
  });

  it('prints nothing but JSON on stdout with --json, and says fio is missing there', () => {
    const dir = tempDir();
    try {
      const r = run(
        '--dir',
        dir.path,
        '--size',
        '2MiB',
        '--queue-depth',
        '2',
        '--reps',
        '1',
        '--engine',
        'threads',
        '--fio',
        '/nonexistent/fio',
        '--json',
      );
      expect(r.status, r.stderr).toBe(0);
      const report = JSON.parse(r.stdout) as FileBenchReport;
      expect(report.fioMissing).toMatch(/nonexistent/);
      expect(report.rows.every((row) => row.peer === 'node-fs')).toBe(true);
      expect(r.stderr).not.toMatch(/nonexistent/);
      expect(readdirSync(dir.path)).toEqual([]);
    } finally {
      dir.remove();
    }
  });

  it('says on stderr that fio is missing in human mode', () => {
    const dir = tempDir();
    try {
      const r = run(
        '--dir',
        dir.path,
        '--size',
        '2MiB',
        '--queue-depth',
        '2',
        '--reps',
        '1',
        '--engine',
        'threads',
        '--fio',
        '/nonexistent/fio',
        '--no-node-fs',
      );
      expect(r.status, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/nonexistent.*kvtier alone/);
      expect(r.stdout).toMatch(/kvtier GB\/s/);
    } finally {
      dir.remove();
    }
  });
});
