// A staging or prefetch copy that fails verification after it landed in a slot reused from a
// victim must not give the victim that slot back (its bytes are gone): the victim keeps the copy
// written down for it, and the damaged source is dropped and counted corrupt. Real file tier, real
// bytes, an injected clock; staging ticks are waited for, never slept for.
import { afterAll, describe, expect, it } from 'vitest';

import {
  BS,
  conversations,
  open,
  reconciles,
  removeDirs,
  S,
  staging,
  ticks,
  X,
  type Setup,
} from './staging-helpers.js';
import { closeSync, openSync, readdirSync, readFileSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';

afterAll(removeDirs);

/** Flips one byte of each of these blocks' copies in the file tier's files. */
function corrupt(s: Setup, keys: string[]): void {
  const files: string[] = [];
  const walk = (d: string): void => {
    for (const f of readdirSync(d)) {
      const q = join(d, f);
      if (statSync(q).isDirectory()) walk(q);
      else files.push(q);
    }
  };
  walk(s.dir);
  let n = 0;
  for (const f of files) {
    const buf = readFileSync(f);
    for (const k of keys) {
      const at = buf.indexOf(s.data.get(k)!);
      if (at < 0) continue;
      const fd = openSync(f, 'r+');
      writeSync(fd, Buffer.from([buf[at + 100]! ^ 0xff]), 0, 1, at + 100);
      closeSync(fd);
      n++;
    }
  }
  expect(n).toBe(keys.length);
}

async function xIntact(s: Setup): Promise<boolean[]> {
  const dst = Buffer.alloc(4 * BS);
  const g = await s.w.get(X, dst);
  return X.map((k, i) => g.found[i]! && dst.subarray(i * BS, (i + 1) * BS).equals(s.data.get(k)!));
}

describe('a copy that fails verification into a reused victim slot', () => {
  it('staging a block whose file copy is corrupt keeps the host victim it displaced', async () => {
    const s = await open({ bytesPerSecond: 1e9 });
    await conversations(s); // host: X (no other copy); file: S
    corrupt(s, [S[1]!, S[3]!]);
    s.clock.t = 10_000; // S due: staging copies S up, displacing X blocks
    await ticks(s, 20);
    const p = staging(s);
    // The two damaged sources were tried, failed, dropped and counted corrupt; others staged.
    expect(p.failed).toBe(2);
    expect(s.w.stats().corrupt).toBe(2);
    expect(s.w.lookup([S[1]!, S[3]!]).tiers).toEqual([-1, -1]);
    expect(p.tiers[0]!.staged).toBeGreaterThan(0);
    reconciles(p);
    expect(await xIntact(s)).toEqual([true, true, true, true]);
    await s.w.close();
  });

  it('control: the same without staging keeps every X block', async () => {
    const s = await open({ bytesPerSecond: 1e9 }, { predictivePrefetch: undefined });
    await conversations(s);
    corrupt(s, [S[1]!, S[3]!]);
    s.clock.t = 10_000;
    expect(await xIntact(s)).toEqual([true, true, true, true]);
    await s.w.close();
  });

  it('an explicit prefetch() of a corrupt file block into full host memory keeps the victim', async () => {
    const s = await open({ bytesPerSecond: 1e9 }, { predictivePrefetch: undefined });
    await conversations(s);
    corrupt(s, [S[1]!]);
    s.clock.t = 10_000;
    const r = await s.w.prefetch([S[1]!], { to: 0 });
    expect(r.moved).toBe(0);
    expect(s.w.stats().corrupt).toBe(1);
    expect(s.w.lookup([S[1]!]).tiers).toEqual([-1]);
    expect(await xIntact(s)).toEqual([true, true, true, true]);
    await s.w.close();
  });
});
