import { describe, expect, it } from 'vitest';

import { chainKeys, KvtierError } from '../../lib/index.js';
import {
  distinctBlocks,
  generateWorkload,
  Rng,
  type DemoRequest,
} from '../../lib/apps/demo/workload.js';

const plain = (r: DemoRequest): unknown => ({ ...r, tokens: Array.from(r.tokens) });

function startsWith(a: Uint32Array, prefix: Uint32Array): boolean {
  if (prefix.length > a.length) return false;
  for (let i = 0; i < prefix.length; i++) if (a[i] !== prefix[i]) return false;
  return true;
}

describe('demo workload', () => {
  const w = generateWorkload({ seed: 7, requests: 300 });

  it('is deterministic for a seed, and differs across seeds', () => {
    const again = generateWorkload({ seed: 7, requests: 300 });
    expect(again.requests.map(plain)).toEqual(w.requests.map(plain));
    expect(again.systemPrompts.map((p) => Array.from(p))).toEqual(
      w.systemPrompts.map((p) => Array.from(p)),
    );
    const other = generateWorkload({ seed: 8, requests: 300 });
    expect(Array.from(other.requests[0]!.tokens)).not.toEqual(Array.from(w.requests[0]!.tokens));
  });

  it('begins a longer run with the requests of a shorter one', () => {
    const short = generateWorkload({ seed: 7, requests: 40 });
    expect(short.requests).toHaveLength(40);
    expect(short.requests.map(plain)).toEqual(w.requests.slice(0, 40).map(plain));
  });

  it('has the requested count, in time order, with valid token ids and lengths', () => {
    expect(w.requests).toHaveLength(300);
    w.requests.forEach((r, i) => {
      expect(r.index).toBe(i);
      if (i > 0) expect(r.time).toBeGreaterThanOrEqual(w.requests[i - 1]!.time);
      expect(r.promptTokens).toBeGreaterThan(r.inheritedTokens);
      expect(r.tokens.length).toBeGreaterThan(r.promptTokens); // a reply follows the prompt
      expect(r.systemTokens).toBeLessThanOrEqual(r.inheritedTokens);
      let max = 0;
      for (const t of r.tokens) if (t > max) max = t;
      expect(max).toBeLessThan(w.options.vocab);
    });
  });

  it('shares a few system prompts across sessions', () => {
    const bySession = new Map<number, DemoRequest>();
    for (const r of w.requests) if (!bySession.has(r.session)) bySession.set(r.session, r);
    const roots = [...bySession.values()].filter((r) => r.parent < 0);
    const prompts = new Map<number, number>();
    for (const r of w.requests) {
      const sys = w.systemPrompts[r.systemPrompt]!;
      expect(r.systemTokens).toBe(sys.length);
      expect(startsWith(r.tokens, sys)).toBe(true);
    }
    for (const r of roots) prompts.set(r.systemPrompt, (prompts.get(r.systemPrompt) ?? 0) + 1);
    expect(prompts.size).toBeGreaterThan(1);
    expect(prompts.size).toBeLessThanOrEqual(w.options.systemPrompts);
    expect(Math.max(...prompts.values())).toBeGreaterThan(1);
    expect(w.systemPrompts.every((p) => p.length >= 1024)).toBe(true);
  });

  it('grows each session turn by turn: every prompt extends the previous request and its reply', () => {
    const last = new Map<number, DemoRequest>();
    let longest = 0;
    for (const r of w.requests) {
      const prev = last.get(r.session);
      if (prev) {
        expect(r.turn).toBe(prev.turn + 1);
        expect(r.promptTokens).toBeGreaterThan(prev.tokens.length);
        expect(startsWith(r.tokens, prev.tokens)).toBe(true);
      } else {
        expect(r.turn).toBe(0);
        expect(['start', 'subagent']).toContain(r.kind);
      }
      last.set(r.session, r);
      longest = Math.max(longest, r.turn);
    }
    expect(longest).toBeGreaterThanOrEqual(3);
  });

  it('forks sub-agents from the whole context of their parent, and the parent joins them', () => {
    const children = w.requests.filter((r) => r.kind === 'subagent');
    expect(children.length).toBeGreaterThan(0);
    expect(w.subagents).toBe(new Set(children.map((r) => r.session)).size);
    for (const c of children) {
      expect(c.parent).toBeGreaterThanOrEqual(0);
      // The parent's latest request before the fork: its prompt and reply are the child's start.
      const parentLast = w.requests
        .slice(0, c.index)
        .filter((r) => r.session === c.parent)
        .at(-1)!;
      expect(parentLast.tokens.length).toBe(c.inheritedTokens);
      expect(startsWith(c.tokens, parentLast.tokens)).toBe(true);
      expect(c.systemPrompt).toBe(parentLast.systemPrompt);
    }
    expect(w.requests.some((r) => r.kind === 'join')).toBe(true);
  });

  it('has idle gaps: quick tool calls, users thinking, users coming back minutes later', () => {
    const kinds = new Set(w.requests.map((r) => r.kind));
    for (const k of ['start', 'tool', 'user', 'resume', 'subagent', 'join']) {
      expect(kinds, k).toContain(k);
    }
    const resumed = w.requests.filter((r) => r.kind === 'resume');
    expect(resumed.every((r) => r.idleMs >= 3 * 60_000)).toBe(true);
    expect(w.requests.filter((r) => r.kind === 'tool').every((r) => r.idleMs < 5_000)).toBe(true);
  });

  it('counts the distinct blocks it stores exactly', () => {
    for (const bt of [16, 64]) {
      const seen = new Set<string>();
      const counts = distinctBlocks(w, bt);
      w.requests.forEach((r, i) => {
        for (const k of chainKeys(r.tokens, { blockTokens: bt }).keys()) seen.add(k);
        expect(counts[i], `request ${i}`).toBe(seen.size);
      });
    }
  });

  it('refuses bad options with KVTIER_BAD_ARGUMENT', () => {
    for (const o of [
      { seed: -1, requests: 1 },
      { seed: 1.5, requests: 1 },
      { seed: 2 ** 32, requests: 1 },
      { seed: 1, requests: 0 },
      { seed: 1, requests: 1, systemPrompts: 0 },
      { seed: 1, requests: 1, subagentChance: 2 },
    ]) {
      expect(() => generateWorkload(o), JSON.stringify(o)).toThrow(KvtierError);
      try {
        generateWorkload(o);
      } catch (e) {
        expect((e as KvtierError).code).toBe('KVTIER_BAD_ARGUMENT');
      }
    }
  });

  it('has a PRNG that is the same everywhere', () => {
    const a = new Rng(1);
    const b = new Rng(1);
    const xs = Array.from({ length: 5 }, () => a.u32());
    expect(Array.from({ length: 5 }, () => b.u32())).toEqual(xs);
    expect(new Set(xs).size).toBe(5);
    const r = new Rng(99);
    for (let i = 0; i < 1000; i++) {
      const v = r.int(3, 5);
      expect(v).toBeGreaterThanOrEqual(3);
      expect(v).toBeLessThanOrEqual(5);
    }
  });
});
