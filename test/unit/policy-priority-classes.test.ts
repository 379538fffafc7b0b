import { describe, expect, it } from 'vitest';

import { policyByName } from '../../lib/policy/index.js';
import type { AccessInfo } from '../../lib/policy/policy.js';

const at = (priority: number, depth = 0): AccessInfo => ({
  now: 1_000,
  priority,
  depth,
  chainLength: 1,
  request: priority,
});

describe('priority classes', () => {
  it('are dropped once they hold no key, so distinct priorities do not pile up', () => {
    const p = policyByName<string>('return-time', 64);
    const classes = (): number => (p as unknown as { classes: Map<number, unknown> }).classes.size;
    for (let i = 1; i <= 100; i++) p.insert(`k${i}`, at(i));
    expect(classes()).toBe(100);
    expect(p.size).toBe(100);
    // A miss at a priority nobody holds creates nothing.
    p.miss!('other', at(1_000));
    expect(classes()).toBe(100);
    for (let i = 1; i <= 100; i++) p.remove(`k${i}`);
    expect(classes()).toBe(0);
    expect(p.size).toBe(0);
  });

  it('forecast works again once the prioritised blocks are gone', () => {
    const p = policyByName<string>('return-time', 64);
    p.insert('a', { now: 0, priority: 0, depth: 0, chainLength: 1, request: 1 });
    p.insert('b', { now: 10, priority: 0, depth: 0, chainLength: 1, request: 2 });
    p.insert('hot', at(5));
    expect(p.forecast!(2_000, 8)).toEqual([]);
    p.remove('hot');
    p.remove('a'); // 'a' becomes a ghost of its conversation: something to forecast
    expect(p.forecast!(2_000, 8)).toEqual(['a']);
  });
});
