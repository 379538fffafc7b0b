/**
 * The package as a user installs it: pack this checkout, add a prebuilt addon the way
 * `npm run prebuild` does (in a copy, so the checkout's own build is untouched while other tests
 * use it), pack again, install that tarball into an empty project with every compiler replaced
 * by /bin/false, and run `kvtier info --json` and a short demo from there.
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { prerequisite, tempDir } from '../helpers.js';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const tmp = tempDir('kvtier-tarball-');
afterAll(() => tmp.remove());

function sh(
  cmd: string,
  args: string[],
  cwd: string,
  env: NodeJS.ProcessEnv = {},
): SpawnSyncReturns<string> {
  const r = spawnSync(cmd, args, {
    cwd,
    env: { ...process.env, ...env },
    encoding: 'utf8',
    timeout: 480_000,
    maxBuffer: 64 << 20,
  });
  if (r.status !== 0) {
    throw new Error(
      `${cmd} ${args.join(' ')} (in ${cwd}) exited with ${r.status}: ${r.stderr}${r.stdout}`,
    );
  }
  return r;
}

/** `npm pack` without lifecycle scripts (dist/ was built by pretest); returns the tarball path. */
function pack(dir: string, dest: string): string {
  const out = sh('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dest], dir);
  const [packed] = JSON.parse(out.stdout) as { filename: string }[];
  if (packed === undefined) throw new Error(`npm pack printed no file: ${out.stdout}`);
  return join(dest, packed.filename);
}

// A compiler that always fails: if installing the tarball compiled anything, the install fails.
const NO_COMPILER = {
  CC: '/bin/false',
  CXX: '/bin/false',
  npm_config_build_from_source: 'false',
};

describe('the packed package', () => {
  const npm = spawnSync('npm', ['--version'], { encoding: 'utf8' });
  const ready = prerequisite(
    npm.status === 0 && existsSync(join(repo, 'dist', 'index.js')),
    'npm on PATH and a built dist/ (npm test builds it)',
  );

  it.runIf(ready)(
    'installs from its tarball with the prebuilt addon, no compiler involved, and runs info and a demo',
    () => {
      // 1. The package as published, then a prebuilt addon made inside that copy.
      const first = pack(repo, tmp.path);
      const src = join(tmp.path, 'src');
      mkdirSync(src);
      sh('tar', ['-xzf', first, '-C', src], repo);
      const pkg = join(src, 'package');
      symlinkSync(join(repo, 'node_modules'), join(pkg, 'node_modules'));
      sh(
        process.execPath,
        [join(repo, 'node_modules', 'prebuildify', 'bin.js'), '--napi', '--strip'],
        pkg,
        {
          PATH: `${join(repo, 'node_modules', '.bin')}:${process.env.PATH ?? ''}`,
        },
      );
      const prebuilt = join(pkg, 'prebuilds', `${process.platform}-${process.arch}`);
      expect(readdirSync(prebuilt).filter((f) => f.endsWith('.node'))).toHaveLength(1);
      const dest = join(tmp.path, 'dist');
      mkdirSync(dest);
      const tarball = pack(pkg, dest);
      const listing = sh('tar', ['-tzf', tarball], tmp.path).stdout.split('\n');
      expect(listing).toContain(
        `package/prebuilds/${process.platform}-${process.arch}/kvtier.node`,
      );
      expect(listing.some((f) => f.startsWith('package/build/'))).toBe(false);

      // 2. An empty project installs it: dependencies from npm's cache when it has them.
      const app = join(tmp.path, 'app');
      mkdirSync(app);
      writeFileSync(join(app, 'package.json'), '{ "name": "app", "private": true }\n');
      sh(
        'npm',
        ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball],
        app,
        NO_COMPILER,
      );
      const installed = join(app, 'node_modules', 'kvtier');
      expect(existsSync(join(installed, 'build'))).toBe(false); // nothing was compiled

      // 3. info from the installed package: the prebuilt addon, with io_uring as in the checkout.
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

      // 4. A short demo from there: every block verified, some read back.
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
