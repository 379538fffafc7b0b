import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { prerequisite, tempDir } from '../helpers.js';

const cli = fileURLToPath(new URL('../../dist/apps/cli/main.js', import.meta.url));
const fixture = fileURLToPath(
  new URL('../fixtures/traces/conversation-head400.jsonl', import.meta.url),
);
const traces = fileURLToPath(new URL('../../../shared/traces', import.meta.url));

function run(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 600_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface SimJson {
  requests: number;
  accesses: number;
  distinct: number;
  ceiling: { prefix: number; any: number };
  hitRate: { prefix: number; any: number };
  tiers: { name: string; capacity: number; hitRate: { prefix: number; any: number } }[];
}

describe('kvtier sim', () => {
  it('prints only JSON with --json, rates as fractions', () => {
    const r = run('sim', '--trace', fixture, '--capacity', '5%', '--policy', 'lru', '--json');
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as SimJson;
    expect(j.requests).toBe(400);
    expect(j.accesses).toBeGreaterThan(j.distinct);
    expect(j.tiers).toHaveLength(1);
    expect(j.tiers[0]!.capacity).toBe(Math.round(j.distinct * 0.05));
    for (const x of [j.hitRate.prefix, j.hitRate.any, j.ceiling.prefix, j.ceiling.any]) {
      expect(x).toBeGreaterThanOrEqual(0);
      expect(x).toBeLessThanOrEqual(1);
    }
    expect(j.hitRate.prefix).toBeLessThanOrEqual(j.ceiling.prefix);
  });

  it('simulates a hierarchy sized in bytes for a model', () => {
    const r = run(
      'sim',
      '--trace',
      fixture,
      '--tiers',
      'gpu=256MiB,host=1GiB,file=20GiB',
      '--model',
      'llama3-8b',
      '--json',
    );
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as SimJson;
    // 512-token blocks × 128 KiB per token = 64 MiB per block.
    expect(j.tiers.map((t) => t.capacity)).toEqual([4, 16, 320]);
    expect(j.tiers.map((t) => t.name)).toEqual(['gpu', 'host', 'file']);
  });

  it('prints a human summary', () => {
    const r = run('sim', '--trace', fixture, '--capacity', '100');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/400 requests/);
    expect(r.stdout).toMatch(/ceiling/);
  });

  it('fails with a message and a code on bad input', () => {
    const dir = tempDir();
    try {
      const bad = join(dir.path, 'bad.jsonl');
      writeFileSync(
        bad,
        readFileSync(fixture, 'utf8').split('\n').slice(0, 5).join('\n') + '\n{"timestamp":',
      );
      const cases: [string[], RegExp][] = [
        [['--capacity', '0'], /capacity is 0 blocks/],
        [['--capacity', '0%'], /capacity is 0 blocks/],
        [['--policy', 'nope'], /unknown policy "nope"/],
        [['--format', 'csv'], /--format csv/],
        [['--capacity', '1GiB'], /needs --model or --block-bytes/],
        [['--model', 'gpt-9'], /unknown model/],
      ];
      for (const [args, message] of cases) {
        const r = run('sim', '--trace', fixture, ...args);
        expect(r.status, args.join(' ')).not.toBe(0);
        expect(r.stderr).toMatch(message);
        expect(r.stderr).toMatch(/\[KVTIER_BAD_ARGUMENT\]/);
        expect(r.stderr).not.toMatch(/\n\s+at /);
      }
      const t = run('sim', '--trace', bad, '--capacity', '10');
      expect(t.status).not.toBe(0);
      expect(t.stderr).toMatch(/bad\.jsonl:6: truncated line/);
      const s = run('sim', '--trace', bad, '--capacity', '10', '--on-error', 'skip', '--json');
      expect(s.status, s.stderr).toBe(0);
      expect((JSON.parse(s.stdout) as { skipped: number }).skipped).toBe(1);
      const empty = join(dir.path, 'empty.jsonl');
      writeFileSync(empty, '');
      expect(run('sim', '--trace', empty).stderr).toMatch(/empty.*\[KVTIER_BAD_ARGUMENT\]/);
    } finally {
      dir.remove();
    }
  });
});

// Reproduces rows of the reference table in ../shared/traces/SOURCES.md (LRU, prefix hit rate).
describe('kvtier sim on the public traces', () => {
  const have = existsSync(join(traces, 'conversation_trace.jsonl'));
  const run_ = prerequisite(have, `public traces not found at ${traces}`) ? it : it.skip;
  const table: [string, string, number][] = [
    ['conversation_trace.jsonl', '1%', 5.23],
    ['conversation_trace.jsonl', '5%', 19.54],
    ['conversation_trace.jsonl', '10%', 27.84],
    ['synthetic_trace.jsonl', '5%', 15.48],
    ['synthetic_trace.jsonl', '25%', 44.34],
  ];
  for (const [file, capacity, want] of table) {
    run_(`LRU on ${file} at ${capacity}: ${want}%`, () => {
      const r = run(
        'sim',
        '--trace',
        join(traces, file),
        '--capacity',
        capacity,
        '--policy',
        'lru',
        '--json',
      );
      expect(r.status, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout) as SimJson;
      expect(Math.abs(j.hitRate.prefix * 100 - want)).toBeLessThan(0.006);
    });
  }
  run_('Belady on synthetic at 5%: 39.56%', () => {
    const r = run(
      'sim',
      '--trace',
      join(traces, 'synthetic_trace.jsonl'),
      '--capacity',
      '5%',
      '--policy',
      'belady',
      '--json',
    );
    const j = JSON.parse(r.stdout) as SimJson;
    expect(Math.abs(j.hitRate.prefix * 100 - 39.56)).toBeLessThan(0.006);
    expect(j.ceiling.prefix * 100).toBeCloseTo(63.96, 1);
  });
});
