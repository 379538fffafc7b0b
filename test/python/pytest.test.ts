/**
 * Runs the Python client's tests (python/tests: the client, and the vLLM and SGLang adapters)
 * with Debian's pytest, so `npm test` covers them. They spawn this repository's dist/apps/cli/main.js.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { prerequisite } from '../helpers.js';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const python = '/usr/bin/python3';

/** What is missing of python3-pytest, -numpy, -torch and -venv (empty: nothing). */
function missing(): string[] {
  if (!existsSync(python)) return ['python3'];
  const out: string[] = [];
  for (const [pkg, module] of [
    ['python3-pytest', 'pytest'],
    ['python3-numpy', 'numpy'],
    // The adapters' tests hand torch CPU tensors to the connector, as vLLM does; without torch
    // those cases would not be generated, so CI would run less than it claims.
    ['python3-torch', 'torch'],
  ]) {
    if (spawnSync(python, ['-c', `import ${module}`]).status !== 0) out.push(pkg!);
  }
  // Debian ships ensurepip (what `python3 -m venv` needs) in python3-venv.
  const venv = spawnSync('dpkg-query', ['-W', '-f', '${Status}', 'python3-venv'], {
    encoding: 'utf8',
  });
  const venvOk = venv.error
    ? spawnSync(python, ['-c', 'import ensurepip']).status === 0
    : venv.stdout.includes('install ok installed');
  if (!venvOk) out.push('python3-venv');
  return out;
}

function run(cmd: string, args: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: repo, env: process.env });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output }));
  });
}

const lacking = missing();

describe('python/tests (pytest)', () => {
  it.runIf(prerequisite(lacking.length === 0, `missing Debian packages: ${lacking.join(' ')}`))(
    'passes',
    async () => {
      const { code, output } = await run(python, [
        '-m',
        'pytest',
        'python/tests',
        '-q',
        '-p',
        'no:cacheprovider',
        '-rfEs',
      ]);
      expect(code, output).toBe(0);
      expect(output).toMatch(/\d+ passed/);
    },
    900_000,
  );
});
