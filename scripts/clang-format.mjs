#!/usr/bin/env node
// Checks (--check) or rewrites (--fix) the formatting of the native sources with clang-format.
import { execFileSync, spawnSync } from 'node:child_process';

const mode = process.argv[2];
if (mode !== '--check' && mode !== '--fix') {
  process.stderr.write('usage: clang-format.mjs --check | --fix\n');
  process.exit(2);
}
const files = execFileSync(
  'git',
  ['ls-files', 'native/*.cc', 'native/*.h', 'native/**/*.cc', 'native/**/*.h'],
  {
    encoding: 'utf8',
  },
)
  .split('\n')
  .filter(Boolean);
const probe = spawnSync('clang-format', ['--version']);
if (probe.error) {
  process.stderr.write('clang-format is not installed (Debian: apt-get install clang-format)\n');
  process.exit(process.env.CI === 'true' ? 1 : 0);
}
const args = mode === '--check' ? ['--dry-run', '--Werror', ...files] : ['-i', ...files];
const r = spawnSync('clang-format', args, { stdio: 'inherit' });
process.exit(r.status ?? 1);
