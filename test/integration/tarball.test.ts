/**
 * The package as a user installs it: pack this checkout, add a prebuilt addon the way
 * `npm run prebuild` does (in a copy, so the checkout's own build is untouched while other tests
 * use it), pack again, install that tarball into an empty project with every compiler replaced
 * by /bin/false, and run `kvtier info --json` and a short demo from there.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { NO_COMPILER, packAndInstall, sh } from '../../scripts/pack-install.mjs';
import { prerequisite, tempDir } from '../helpers.js';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const tmp = tempDir('kvtier-tarball-');
afterAll(() => tmp.remove());

describe('the packed package', () => {
  const npm = spawnSync('npm', ['--version'], { encoding: 'utf8' });
  const ready = prerequisite(
    npm.status === 0 && existsSync(join(repo, 'dist', 'index.js')),
    'npm on PATH and a built dist/ (npm test builds it)',
  );

  it.runIf(ready)(
    'installs from its tarball with the prebuilt addon, no compiler involved, and runs info and a demo',
    () => {
      // 1. The package as published, with a prebuilt addon made in a copy, installed into an
      //    empty project with no compiler (dependencies from npm's cache when it has them).
      const { tarball, app, installed } = packAndInstall(repo, tmp.path);
      const listing = sh('tar', ['-tzf', tarball], tmp.path).stdout.split('\n');
      expect(listing).toContain(
        `package/prebuilds/${process.platform}-${process.arch}/kvtier.node`,
      );
      expect(listing.some((f) => f.startsWith('package/build/'))).toBe(false);
      expect(existsSync(join(installed, 'build'))).toBe(false); // nothing was compiled

      // 2. info from the installed package: the prebuilt addon, with io_uring as in the checkout.
      const info = JSON.parse(
        sh('npx', ['--no-install', 'kvtier', 'info', '--json'], app, NO_COMPILER).stdout,
      ) as {
        addon: { available: boolean; prebuilt: boolean; path: string };
        ioUring: { available: boolean; compiled: boolean };
      };
      expect(info.addon.available).toBe(true);
      expect(info.addon.prebuilt).toBe(true);
      expect(info.addon.path.startsWith(join(installed, 'prebuilds'))).toBe(true);
      const here = JSON.parse(
        sh(process.execPath, [join(repo, 'dist', 'apps', 'cli', 'main.js'), 'info', '--json'], repo)
          .stdout,
      ) as { ioUring: { available: boolean; compiled: boolean } };
      expect(info.ioUring.compiled).toBe(here.ioUring.compiled);
      expect(info.ioUring.available).toBe(here.ioUring.available);

      // 3. A short demo from there: every block verified, some read back.
      const demo = JSON.parse(
        sh(
          'npx',
          [
            '--no-install',
            'kvtier',
            'demo',
            '--requests',
            '12',
            '--host-bytes',
            '4MiB',
            '--file-bytes',
            '64MiB',
            '--kv-bytes-per-token',
            '1KiB',
            '--json',
          ],
          app,
          NO_COMPILER,
        ).stdout,
      ) as { requests: number; hitBlocks: number; tiers: { corrupt: number }[] };
      expect(demo.requests).toBe(12);
      expect(demo.hitBlocks).toBeGreaterThan(0);
      expect(demo.tiers.every((t) => t.corrupt === 0)).toBe(true);
    },
    600_000,
  );
});
