#!/usr/bin/env node
// Compiles lib/ to dist/ and marks the CLI executable (tsc does not keep file modes).
import { execFileSync } from 'node:child_process';
import { chmodSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const tsc = require.resolve('typescript/bin/tsc');
execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { stdio: 'inherit' });
chmodSync('dist/apps/cli/main.js', 0o755);
