/**
 * The frame parser (native/net/frame_reader.cc) has no N-API surface of its own. Its unit tests
 * are a small C++ program (test/native/cc/frame_reader_test.cc) built here with g++, and its fuzz
 * target run once over the committed corpus (fuzz/corpus/frame_reader/), with ASan and
 * UBSan: valid frames of every kind, split at arbitrary points, placed answers whose checksums
 * are checked, and broken frames (bad magic, lengths beyond the limits, truncation) that must be
 * refused with a reason. Crashes found by `npm run fuzz` are added to that corpus.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { prerequisite, tempDir } from '../helpers.js';

const gxx = spawnSync('g++', ['--version']).status === 0;
const tmp = tempDir('kvtier-frame-reader-');
afterAll(() => tmp.remove());

const clang = spawnSync('clang++-14', ['--version']).status === 0;

describe('frame reader', () => {
  // Plain unit tests (test/native/cc/frame_reader_test.cc): known frames in every cut, placed
  // payloads with their checksums, each refusal with its error code, truncation.
  it.runIf(prerequisite(gxx, 'g++ (it builds the addon too)'))(
    'passes its unit tests: frames in pieces, back to back, placed, refused, truncated',
    () => {
      const exe = join(tmp.path, 'frame_reader_test');
      const build = spawnSync(
        'g++',
        [
          '-std=c++20',
          '-O1',
          '-Wall',
          '-Wextra',
          '-Werror',
          '-o',
          exe,
          'test/native/cc/frame_reader_test.cc',
          'native/net/frame_reader.cc',
          'native/common/crc32c.cc',
        ],
        { encoding: 'utf8' },
      );
      expect(build.status, `${build.stdout}${build.stderr}`).toBe(0);
      const r = spawnSync(exe, [], { encoding: 'utf8' });
      expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/frame reader: \d+ checks passed/);
    },
    120_000,
  );

  it.runIf(prerequisite(clang, 'clang++-14 (and libclang-rt-14-dev) for the fuzz target'))(
    'parses every input of its fuzz corpus without a sanitizer report or a failed check',
    () => {
      const r = spawnSync(process.execPath, ['scripts/fuzz.mjs', '--replay', 'frame_reader'], {
        encoding: 'utf8',
      });
      const out = `${r.stdout}${r.stderr}`;
      expect(out).toMatch(/files found in .*fuzz\/corpus\/frame_reader/);
      expect(out).not.toMatch(/frame_reader fuzz check failed|runtime error|Sanitizer/);
      expect(r.status, out.slice(-2000)).toBe(0);
    },
    120_000,
  );
});
