#!/usr/bin/env node
// Answers build-time questions for binding.gyp and CMakeLists.txt, so both builds decide alike.
//   sources        the addon's source files (from native/sources.txt), one per line
//   liburing       "1" when liburing's header and static library are present, else "0"
//   liburing-lib   the static library to link, or nothing
//   version        the package version, compiled into the addon
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function liburingArchive() {
  if (process.env.KVTIER_NO_LIBURING === '1') return '';
  const headers = ['/usr/include/liburing.h', '/usr/local/include/liburing.h'];
  if (!headers.some((h) => existsSync(h))) return '';
  const archives = [
    '/usr/lib/x86_64-linux-gnu/liburing.a',
    '/usr/lib/aarch64-linux-gnu/liburing.a',
    '/usr/local/lib/liburing.a',
    '/usr/lib/liburing.a',
    '/usr/lib64/liburing.a',
  ];
  return archives.find((a) => existsSync(a)) ?? '';
}

const what = process.argv[2];
switch (what) {
  case 'sources':
    process.stdout.write(readFileSync(join(root, 'native/sources.txt'), 'utf8'));
    break;
  case 'liburing':
    process.stdout.write(liburingArchive() ? '1' : '0');
    break;
  case 'liburing-lib':
    process.stdout.write(liburingArchive());
    break;
  case 'version':
    process.stdout.write(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version);
    break;
  default:
    process.stderr.write(`unknown question: ${what}\n`);
    process.exit(2);
}
