#!/usr/bin/env node
// `npm run prebuild`: a stripped Node-API binary in prebuilds/<platform>-<arch>/. Built against
// the running Node's own headers: prebuildify alone targets the newest Node it knows and fetches
// that version's headers from nodejs.org, which a machine reaching only the npm registry cannot
// (Node-API is ABI-stable, so the headers of any Node >= 20 make the same binary).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const env = { ...process.env };
if (!env.npm_config_nodedir) {
  const prefix = dirname(dirname(process.execPath));
  if (existsSync(join(prefix, 'include/node/node_api.h'))) env.npm_config_nodedir = prefix;
}
const require = createRequire(import.meta.url);
const bin = join(dirname(require.resolve('prebuildify/package.json')), 'bin.js');
const args = [bin, '--napi', '--strip', '--target', `node@${process.versions.node}`];
const r = spawnSync(process.execPath, args, { stdio: 'inherit', env });
process.exit(r.status ?? 1);
