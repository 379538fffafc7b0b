/**
 * The frame parser (native/net/frame_reader.cc) has no N-API surface of its own: its unit test is
 * its fuzz target run once over the committed corpus (fuzz/corpus/frame_reader/), with ASan and
 * UBSan: valid frames of every kind, split at arbitrary points, placed answers whose checksums
 * are checked, and broken frames (bad magic, lengths beyond the limits, truncation) that must be
 * refused with a reason. Crashes found by `npm run fuzz` are added to that corpus.
 */
import { spawnSync } from 'node:child_process';

import { describe, expect, it } from 'vitest';

import { prerequisite } from '../helpers.js';

const clang = spawnSync('clang++-14', ['--version']).status === 0;

describe('frame reader', () => {
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
