import { execFileSync } from 'node:child_process';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { isKvtierError } from '../../lib/core/errors.js';
import { findFio, fioArgs, fioVersion, parseFioJson, runFio } from '../../lib/apps/bench/fio.js';
import { prerequisite, randomBytes, tempDir } from '../helpers.js';

const MiB = 2 ** 20;

/** The parts of fio's JSON that kvtier reads, shaped as fio 3.x prints them. */
function fioJson(jobs: { read?: object; write?: object; error?: number }[]): string {
  return JSON.stringify({
    'fio version': 'fio-3.33',
    jobs: jobs.map((j, i) => ({
      jobname: `job${i}`,
      error: j.error ?? 0,
      read: { io_bytes: 0, bw_bytes: 0, runtime: 0, ...j.read },
      write: { io_bytes: 0, bw_bytes: 0, runtime: 0, ...j.write },
    })),
  });
}

describe('fioArgs', () => {
  const base = { file: '/d/f', blockSize: MiB, queueDepth: 32, size: 1024 * MiB } as const;

  it('mirrors the io_uring engine with one job at iodepth = queue depth', () => {
    const args = fioArgs({ ...base, op: 'read', pattern: 'rand', engine: 'io_uring' });
    expect(args).toEqual(
      expect.arrayContaining([
        '--filename=/d/f',
        '--direct=1',
        '--rw=randread',
        `--bs=${MiB}`,
        '--ioengine=io_uring',
        '--iodepth=32',
        `--size=${1024 * MiB}`,
        '--output-format=json',
      ]),
    );
    expect(args.some((a) => a.startsWith('--numjobs'))).toBe(false);
  });

  it('mirrors the thread pool with queue-depth psync threads splitting a sequential pass', () => {
    const args = fioArgs({ ...base, op: 'write', pattern: 'seq', engine: 'threads' });
    expect(args).toEqual(
      expect.arrayContaining([
        '--rw=write',
        '--ioengine=psync',
        '--thread',
        '--numjobs=32',
        '--group_reporting',
        `--size=${32 * MiB}`,
        `--offset_increment=${32 * MiB}`,
      ]),
    );
  });

  it('gives each psync thread an equal share of random I/O over the whole file', () => {
    const args = fioArgs({ ...base, op: 'read', pattern: 'rand', engine: 'threads' });
    expect(args).toEqual(
      expect.arrayContaining(['--rw=randread', `--size=${1024 * MiB}`, `--io_size=${32 * MiB}`]),
    );
  });

  it('uses no more threads than there are blocks', () => {
    const args = fioArgs({ ...base, size: 4 * MiB, op: 'read', pattern: 'seq', engine: 'threads' });
    expect(args).toEqual(expect.arrayContaining(['--numjobs=4', `--size=${MiB}`]));
  });
});

describe('parseFioJson', () => {
  it('reads the bandwidth of the asked direction', () => {
    const text = fioJson([
      { read: { io_bytes: 1e9, bw_bytes: 2e9, runtime: 500 }, write: { io_bytes: 5 } },
    ]);
    const r = parseFioJson(text, 'read');
    expect(r).toEqual({ ioBytes: 1e9, runtimeMs: 500, bwBytes: 2e9, gbps: 2 });
  });

  it('skips notices fio prints before its JSON', () => {
    const text = `fio: note: something\n${fioJson([{ write: { io_bytes: 3e9, bw_bytes: 3e9, runtime: 1000 } }])}`;
    expect(parseFioJson(text, 'write').gbps).toBe(3);
  });

  it('adds up jobs reported one by one', () => {
    const text = fioJson([
      { read: { io_bytes: 1e9, bw_bytes: 1e9, runtime: 1000 } },
      { read: { io_bytes: 1e9, bw_bytes: 1e9, runtime: 1000 } },
    ]);
    expect(parseFioJson(text, 'read')).toMatchObject({ ioBytes: 2e9, gbps: 2 });
  });

  it.each([
    ['no JSON', 'fio: command not found'],
    ['broken JSON', '{ "jobs": [ '],
    ['no jobs', '{"jobs": []}'],
    ['a failed job', fioJson([{ error: 5, read: { io_bytes: 1, runtime: 1 } }])],
    ['nothing moved', fioJson([{ read: { io_bytes: 0, runtime: 0 } }])],
  ])('refuses %s with KVTIER_IO', (_what, text) => {
    let caught: unknown;
    try {
      parseFioJson(text, 'read');
    } catch (e) {
      caught = e;
    }
    expect(isKvtierError(caught, 'KVTIER_IO')).toBe(true);
  });
});

describe('findFio', () => {
  it('finds fio on PATH, or says why not', () => {
    const dir = tempDir();
    try {
      const missing = (where: ReturnType<typeof findFio>): string =>
        'missing' in where ? where.missing : `found ${where.path}`;
      expect(missing(findFio(undefined, dir.path))).toMatch(/PATH/);
      const fake = join(dir.path, 'fio');
      writeFileSync(fake, '#!/bin/sh\necho fio-0.0\n');
      expect(missing(findFio(undefined, dir.path))).toMatch(/PATH/); // not executable yet
      chmodSync(fake, 0o755);
      expect(findFio(undefined, `/nonexistent:${dir.path}`)).toEqual({ path: fake });
      expect(missing(findFio(join(dir.path, 'nope')))).toMatch(/nope/);
    } finally {
      dir.remove();
    }
  });
});

// A real fio on a small file: the command line kvtier builds is one fio accepts, and its JSON is
// what parseFioJson expects. In CI fio is installed, so its absence fails there.
const fio = findFio();
const haveFio = prerequisite('path' in fio, 'fio is not installed (apt-get install fio)');

describe.runIf(haveFio)('fio itself', () => {
  const dir = tempDir();
  const file = join(dir.path, 'fio.bin');
  const size = 8 * MiB;
  const fioPath = 'path' in fio ? fio.path : 'fio';

  beforeAll(() => writeFileSync(file, randomBytes(size)));
  afterAll(() => dir.remove());

  it('reports its version', async () => {
    expect(await fioVersion(fioPath)).toMatch(/^fio-\d/);
  });

  it.each([
    ['io_uring', 'write', 'seq'],
    ['io_uring', 'read', 'rand'],
    ['threads', 'write', 'rand'],
    ['threads', 'read', 'seq'],
  ] as const)('runs %s %s %s over the whole file', async (engine, op, pattern) => {
    if (engine === 'io_uring') {
      // fio must have been built with io_uring; say so instead of failing obscurely.
      const engines = execFileSync(fioPath, ['--enghelp'], { encoding: 'utf8' });
      if (
        !prerequisite(engines.includes('io_uring'), 'fio lacks the io_uring engine', 'privilege')
      ) {
        return;
      }
    }
    const r = await runFio(fioPath, {
      file,
      op,
      pattern,
      engine,
      blockSize: 256 * 1024,
      queueDepth: 4,
      size,
    });
    expect(r.ioBytes).toBe(size);
    expect(r.runtimeMs).toBeGreaterThanOrEqual(0);
    expect(r.gbps).toBeGreaterThan(0);
    // The rate is fio's own bandwidth figure of this job, in GB/s.
    expect(r.gbps).toBe(r.bwBytes / 1e9);
  });

  it('fails with KVTIER_IO and fio’s message when fio refuses the job', async () => {
    await expect(
      runFio(fioPath, {
        file: join(dir.path, 'missing.bin'),
        op: 'read',
        pattern: 'seq',
        engine: 'threads',
        blockSize: 4096,
        queueDepth: 1,
        size: 4096,
      }),
    ).rejects.toMatchObject({ code: 'KVTIER_IO' });
  });
});
