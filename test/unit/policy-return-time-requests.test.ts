import { describe, expect, it } from 'vitest';

import { ReturnTimePolicy } from '../../lib/policy/return-time.js';
import { BINS } from '../../lib/policy/survival.js';

/** One call of a request: a get (reads its chain so far) or a put (the chain plus 4 new blocks). */
interface Call {
  request: number;
  conversation: string;
  turn: number;
  now: number;
  kind: 'get' | 'put';
}

/** Replays the calls through a return-time policy; returns what its model learned. */
function learned(calls: readonly Call[]): { returns: Record<number, number>; groups: number } {
  const p = new ReturnTimePolicy<string>(10_000);
  const held = new Set<string>();
  for (const c of calls) {
    const n = 4 * c.turn + (c.kind === 'put' ? 4 : 0);
    for (let i = 0; i < n; i++) {
      const key = `${c.conversation}${i}`;
      const info = { now: c.now, priority: 0, depth: i, chainLength: n, request: c.request };
      if (held.has(key)) p.touch(key, info);
      else if (c.kind === 'get') p.miss(key, info);
      else {
        p.insert(key, info);
        held.add(key);
      }
    }
  }
  // One more request, so the last one is finished.
  p.insert('end', { now: 1e9, priority: 0, depth: 0, chainLength: 1, request: -1 });
  const m = p.model;
  const returns: Record<number, number> = {};
  for (let c = 0; c < m.classes; c++) {
    let sum = 0;
    for (let b = 0; b < BINS; b++) sum += m.events[c * BINS + b]!;
    if (sum > 0) returns[c] = sum;
  }
  return { returns, groups: p.groups };
}

describe('return-time: requests whose calls interleave', () => {
  it("learns the same returns when two conversations' gets and puts interleave as when they do not", () => {
    const sequential: Call[] = [];
    const interleaved: Call[] = [];
    let request = 0;
    for (let turn = 0; turn < 5; turn++) {
      const now = turn * 5_000;
      const a = ++request;
      const b = ++request;
      const call = (r: number, conversation: string, kind: 'get' | 'put'): Call => ({
        request: r,
        conversation,
        turn,
        now,
        kind,
      });
      sequential.push(
        call(a, 'A', 'get'),
        call(a, 'A', 'put'),
        call(b, 'B', 'get'),
        call(b, 'B', 'put'),
      );
      interleaved.push(
        call(a, 'A', 'get'),
        call(b, 'B', 'get'),
        call(a, 'A', 'put'),
        call(b, 'B', 'put'),
      );
    }
    const s = learned(sequential);
    const i = learned(interleaved);
    // Four returns per conversation (turns 1-4), none of a request to itself after 0 ms.
    expect(Object.values(s.returns).reduce((x, y) => x + y, 0)).toBe(8);
    expect(i.returns).toEqual(s.returns);
    expect(i.groups).toBe(s.groups);
  });
});
