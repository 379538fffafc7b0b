import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import type { TimedResult } from '../../lib/apps/sim/timed.js';

const cli = fileURLToPath(new URL('../../dist/apps/cli/main.js', import.meta.url));
const fixture = fileURLToPath(
  new URL('../fixtures/traces/conversation-head400.jsonl', import.meta.url),
);

function run(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 600_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const timed = ['sim', '--trace', fixture, '--tiers', 'gpu=1%,host=50%', '--timed'];

describe('kvtier sim --timed --prefetch', () => {
  it('reports what prefetch staged, reconciled, next to the same replay without it', () => {
    const r = run(...timed, '--policy', 'return-time', '--prefetch=0.5', '--json');
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as TimedResult;
    const p = j.prefetch!;
    expect(p.share).toBe(0.5);
    expect(p.staged).toBeGreaterThan(0);
    expect(p.staged).toBe(p.read + p.wasted + p.resident + p.restaged);
    expect(p.stagedFrom.reduce((a, b) => a + b, 0)).toBe(p.staged);
    expect(p.stagedHitsByTier.reduce((a, b) => a + b, 0)).toBe(p.stagedHits);
    expect(p.shareStaged).toBeCloseTo(p.stagedHits / (p.stagedHits + p.lowerHits), 12);
    expect(p.without.ttft.p50).toBeGreaterThan(0);
    const text = run(...timed, '--policy', 'return-time', '--prefetch');
    expect(text.status, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/stages at 50\.00% of its bandwidth/);
    expect(text.stdout).toMatch(/share already staged up when asked: [0-9.]+%/);
  });

  it('rejects a bad share, a missing --timed and a policy that cannot forecast', () => {
    const cases: [string[], RegExp][] = [
      [[...timed, '--policy', 'return-time', '--prefetch=2'], /--prefetch 2: expected a share/],
      [[...timed, '--policy', 'return-time', '--prefetch=0'], /--prefetch 0: expected a share/],
      [[...timed, '--policy', 'return-time', '--prefetch=fast'], /--prefetch fast/],
      [[...timed, '--policy', 'return-time', '--prefetch=-1'], /--prefetch -1/],
      [
        ['sim', '--trace', fixture, '--policy', 'return-time', '--prefetch'],
        /does not go with no --timed/,
      ],
      [[...timed, '--policy', 'lru', '--prefetch'], /needs a policy that forecasts.*not lru/],
      [[...timed, '--policy', 'return-time', '--prefetch', '--codec', 'int8'], /--codec/],
    ];
    for (const [args, message] of cases) {
      const r = run(...args);
      expect(r.status, args.join(' ')).not.toBe(0);
      expect(r.stderr, args.join(' ')).toMatch(message);
      expect(r.stderr).toMatch(/\[KVTIER_BAD_ARGUMENT\]/);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
  });
});
