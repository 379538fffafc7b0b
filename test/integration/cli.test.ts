import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { tempDir } from '../helpers.js';

const cli = fileURLToPath(new URL('../../dist/apps/cli/main.js', import.meta.url));

function run(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('kvtier info', () => {
  it('reports every capability with available and, when missing, a reason', () => {
    const r = run('info', '--json');
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout) as Record<string, { available?: boolean; reason?: string }>;
    for (const key of ['addon', 'ioUring', 'oDirect', 'cuda', 'cufile', 'ibverbs']) {
      const c = report[key];
      expect(c, key).toBeDefined();
      expect(typeof c?.available, key).toBe('boolean');
      if (!c?.available) expect(typeof c?.reason, key).toBe('string');
    }
    expect(report.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(report.addon?.available).toBe(true);
  });

  it('tests O_DIRECT on --dir', () => {
    const dir = tempDir();
    try {
      const report = JSON.parse(run('info', '--json', '--dir', dir.path).stdout) as {
        oDirect: { dir: string; available: boolean; offsetAlign?: number };
      };
      expect(report.oDirect.dir).toBe(dir.path);
      expect(report.oDirect.available).toBe(true);
      expect(report.oDirect.offsetAlign).toBeGreaterThan(0);
    } finally {
      dir.remove();
    }
  });

  it('explains a directory it cannot use', () => {
    const report = JSON.parse(run('info', '--json', '--dir', '/nonexistent/kvtier').stdout) as {
      oDirect: { available: boolean; reason?: string };
    };
    expect(report.oDirect.available).toBe(false);
    expect(report.oDirect.reason).toMatch(/nonexistent/);
  });

  it('prints a human summary', () => {
    const r = run('info');
    expect(r.status).toBe(0);
    for (const word of ['addon', 'io_uring', 'O_DIRECT', 'cuda', 'cufile', 'ibverbs']) {
      expect(r.stdout).toContain(word);
    }
  });
});

describe('the CLI', () => {
  it('fails unknown commands without a stack trace', () => {
    const r = run('frobnicate');
    expect(r.status).not.toBe(0);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});
