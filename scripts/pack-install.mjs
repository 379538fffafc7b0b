// Installs this checkout the way a user gets it: `npm pack` (dist/ must be built), a prebuilt
// addon made inside an extracted copy (so the checkout's own build/ is untouched), `npm pack`
// again, and `npm install` of that tarball into an empty project with every compiler replaced by
// /bin/false. Used by test/integration/tarball.test.ts and scripts/bench-installed.mjs.
import { spawnSync } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Environment under which installing must not compile anything. */
export const NO_COMPILER = {
  CC: '/bin/false',
  CXX: '/bin/false',
  npm_config_build_from_source: 'false',
};

/** Runs a command; throws with its output when it fails. */
export function sh(cmd, args, cwd, env = {}) {
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

/** `npm pack` without lifecycle scripts; returns the tarball's path. */
export function pack(dir, dest) {
  const out = sh('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dest], dir);
  const [packed] = JSON.parse(out.stdout);
  if (packed === undefined) throw new Error(`npm pack printed no file: ${out.stdout}`);
  return join(dest, packed.filename);
}

/**
 * Packs `repo` with a prebuilt addon and installs it into `${tmp}/app`. Returns the tarball, the
 * app folder and the installed package's folder.
 */
export function packAndInstall(repo, tmp) {
  const first = pack(repo, tmp);
  const src = join(tmp, 'src');
  mkdirSync(src);
  sh('tar', ['-xzf', first, '-C', src], repo);
  const pkg = join(src, 'package');
  symlinkSync(join(repo, 'node_modules'), join(pkg, 'node_modules'));
  // `npm run prebuild`, as a release does: npm's environment (its nodedir, its PATH with the
  // copy's node_modules/.bin) is what node-gyp builds with, as at `npm install`.
  sh('npm', ['run', 'prebuild'], pkg);
  const dest = join(tmp, 'tarball');
  mkdirSync(dest);
  const tarball = pack(pkg, dest);
  const app = join(tmp, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), '{ "name": "app", "private": true }\n');
  sh('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], app, NO_COMPILER);
  return { tarball, app, installed: join(app, 'node_modules', 'kvtier') };
}
