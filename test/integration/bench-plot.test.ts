/**
 * `--plot FILE` and progress through the real CLI: a short `bench file` draws a PNG and an SVG of
 * its table, every bench refuses a file it cannot draw before it starts, and progress shows on a
 * terminal (a pty from script(1)) but never with --json or when stderr is a pipe.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { prerequisite, tempDir } from '../helpers.js';

const cli = fileURLToPath(new URL('../../dist/apps/cli/main.js', import.meta.url));
const trace = fileURLToPath(
  new URL('../fixtures/traces/conversation-head400.jsonl', import.meta.url),
);
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
/** What a progress line writes before each message; nothing else in kvtier's output does. */
const CLEAR_LINE = '\r\x1b[K';

function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The smallest `bench file` run: one engine, one rep, no fio, 2 MiB. */
function fileBench(dir: string, ...more: string[]): string[] {
  return [
    'bench',
    'file',
    '--dir',
    dir,
    '--size',
    '2MiB',
    '--queue-depth',
    '2',
    '--reps',
    '1',
    '--engine',
    'threads',
    '--fio',
    '/nonexistent/fio',
    ...more,
  ];
}

/** Runs the CLI with stdin, stdout and stderr on a pty (script(1)); returns all it wrote. */
function onTerminal(args: string[]): { status: number | null; output: string } | undefined {
  const available = spawnSync('script', ['--version']).status === 0;
  if (!prerequisite(available, 'script(1) for a pty (Debian: bsdutils)')) return undefined;
  const quoted = [process.execPath, cli, ...args].map((a) => `'${a}'`).join(' ');
  const r = spawnSync('script', ['-qec', quoted, '/dev/null'], {
    encoding: 'utf8',
    timeout: 120_000,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return { status: r.status, output: r.stdout };
}

describe('bench --plot', () => {
  it('draws a short bench file as a PNG and as an SVG naming its series', () => {
    const dir = tempDir();
    try {
      const png = join(dir.path, 'file.png');
      const svg = join(dir.path, 'file.svg');
      const a = run(fileBench(dir.path, '--plot', png));
      expect(a.status, a.stderr).toBe(0);
      expect(a.stdout).toMatch(/kvtier GB\/s/);
      const bytes = readFileSync(png);
      expect(bytes.subarray(0, 8).equals(PNG_SIGNATURE)).toBe(true);
      expect(statSync(png).size).toBeGreaterThan(1000);
      const b = run(fileBench(dir.path, '--json', '--plot', svg));
      expect(b.status, b.stderr).toBe(0);
      JSON.parse(b.stdout); // stdout stays pure JSON with --plot
      const text = readFileSync(svg, 'utf8');
      expect(text).toMatch(/^<svg/);
      expect(text).toContain('kvtier threads');
      expect(text).toContain('node-fs');
      expect(text).toContain('seq read 1MiB');
      // Only the charts are left: the bench removed its test files.
      expect(readdirSync(dir.path).sort()).toEqual(['file.png', 'file.svg']);
    } finally {
      dir.remove();
    }
  });

  // Those with --dir show that nothing was written there: the refusal came before the run.
  it.each([
    ['bench file', ['bench', 'file'], true],
    ['bench warehouse', ['bench', 'warehouse'], true],
    ['bench engine', ['bench', 'engine'], false],
    ['bench net', ['bench', 'net', '--no-iperf3'], false],
    ['bench gpu', ['bench', 'gpu', '--no-peer'], true],
    ['bench llama', ['bench', 'llama'], true],
    ['bench codec', ['bench', 'codec'], false],
    ['cluster bench', ['cluster', 'bench', '--redis', 'redis://127.0.0.1:1'], false],
    ['sim', ['sim', '--trace', trace], false],
  ])('%s refuses --plot chart.jpg before it starts', (_name, args, hasDir) => {
    const dir = tempDir();
    try {
      const where = hasDir ? ['--dir', dir.path] : [];
      const r = run([...args, ...where, '--plot', join(dir.path, 'chart.jpg')]);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(
        /^kvtier: --plot .*chart\.jpg: .*\.svg or \.png \[KVTIER_BAD_ARGUMENT\]\n$/,
      );
      expect(r.stdout).toBe('');
      expect(readdirSync(dir.path)).toEqual([]);
    } finally {
      dir.remove();
    }
  });
});

describe('progress', () => {
  it('bench file and sim: none on stderr when it is a pipe', () => {
    const dir = tempDir();
    try {
      const b = run(fileBench(dir.path));
      expect(b.status, b.stderr).toBe(0);
      expect(b.stderr).not.toContain(CLEAR_LINE);
      expect(b.stderr).not.toMatch(/\[\d+\/\d+\] rep/);
      expect(b.stderr).toMatch(/nonexistent\/fio/); // notices still print
      const s = run(['sim', '--trace', trace]);
      expect(s.status, s.stderr).toBe(0);
      expect(s.stderr).toBe('');
    } finally {
      dir.remove();
    }
  });

  it('bench file and sim: on a terminal, and never with --json there', () => {
    const dir = tempDir();
    try {
      const shown = onTerminal(fileBench(dir.path));
      if (shown === undefined) return;
      expect(shown.status, shown.output).toBe(0);
      expect(shown.output).toContain(CLEAR_LINE);
      expect(shown.output).toMatch(/\[4\/4\] rep 1: read rand/);
      const json = onTerminal(fileBench(dir.path, '--json'));
      expect(json!.status, json!.output).toBe(0);
      expect(json!.output).not.toContain(CLEAR_LINE);
      expect(json!.output).not.toMatch(/\[\d+\/\d+\] rep/);
      const sim = onTerminal(['sim', '--trace', trace]);
      expect(sim!.output).toMatch(/replaying \(\S+\)\s+[█░]+\s+\d+%/);
      const simJson = onTerminal(['sim', '--trace', trace, '--json']);
      expect(simJson!.status).toBe(0);
      expect(simJson!.output).not.toContain('█');
      expect(simJson!.output).not.toContain(CLEAR_LINE);
    } finally {
      dir.remove();
    }
  });
});
