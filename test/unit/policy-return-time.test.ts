import { describe, expect, it } from 'vitest';

import { policyByName } from '../../lib/policy/index.js';
import type { AccessInfo } from '../../lib/policy/policy.js';
import { CLASSES, DEAD, ORPHAN } from '../../lib/policy/return-classes.js';
import { ReturnTimePolicy } from '../../lib/policy/return-time.js';
import { BINS, binOf, SurvivalModel } from '../../lib/policy/survival.js';
import { ABSENT, BlockIndex, DenseKeyIds } from '../../lib/warehouse/block-index.js';

let request = 0;
const at = (now: number, depth: number, chainLength: number, req = request): AccessInfo => ({
  now,
  priority: 0,
  depth,
  chainLength,
  request: req,
});

/** One request by the sim's rules, straight on a policy: reads what is resident, places the rest. */
function send(
  p: ReturnTimePolicy<number>,
  now: number,
  keys: number[],
  resident: Set<number>,
): void {
  request++;
  keys.forEach((k, i) => {
    if (resident.has(k)) p.touch(k, at(now, i, keys.length));
    else p.miss(k, at(now, i, keys.length));
  });
  keys.forEach((k, i) => {
    if (resident.has(k)) p.touch(k, at(now, i, keys.length));
    else {
      p.insert(k, at(now, i, keys.length));
      resident.add(k);
    }
  });
}

describe('ReturnTimePolicy', () => {
  it('evicts a group from its deepest block up, oldest group first while nothing is learned', () => {
    const p = new ReturnTimePolicy<number>(10);
    const resident = new Set<number>();
    send(p, 0, [1, 2, 3], resident);
    send(p, 1000, [7, 8], resident);
    expect(p.victim()).toBe(3);
    p.remove(3);
    expect(p.victim()).toBe(2);
    p.remove(2);
    expect(p.victim()).toBe(1);
    p.remove(1);
    expect(p.victim()).toBe(8);
    expect(p.size).toBe(2);
  });

  it("evicts first what the conversation's next request did not re-read", () => {
    const p = new ReturnTimePolicy<number>(10);
    const resident = new Set<number>();
    send(p, 0, [20, 21], resident); // another conversation, older
    send(p, 500, [1, 2, 3], resident); // turn 1 (3 is its partial last block)
    send(p, 1000, [1, 2, 4, 5], resident); // turn 2 re-reads 1, 2: continues turn 1
    // Block 3 is dead: it goes before the older conversation's blocks.
    expect(p.victim()).toBe(3);
    p.remove(3);
    expect(p.victim()).toBe(21);
  });

  it("a session id narrows a request's predecessors: a sub-agent in its parent's session continues nothing", () => {
    const p = new ReturnTimePolicy<number>(10);
    const resident = new Set<number>();
    const inSession = (session: number, now: number, keys: number[]): void => {
      request++;
      const info = (i: number): AccessInfo => ({ ...at(now, i, keys.length), session });
      keys.forEach((k, i) => (resident.has(k) ? p.touch(k, info(i)) : p.miss(k, info(i))));
      keys.forEach((k, i) => {
        if (resident.has(k)) p.touch(k, info(i));
        else {
          p.insert(k, info(i));
          resident.add(k);
        }
      });
    };
    inSession(1, 0, [20, 21]); // another conversation, older
    inSession(7, 500, [1, 2, 3]); // the parent's turn
    inSession(7, 1000, [30, 31]); // a sub-agent: the parent's session, none of its blocks
    inSession(1, 1500, [40]); // ends the sub-agent's request
    // The parent's blocks are not dead: the oldest group goes first, deepest block first.
    expect(p.victim()).toBe(21);
    p.remove(21);
    expect(p.victim()).toBe(20);
    p.remove(20);
    expect(p.victim()).toBe(3);
    // Within the session, a request that re-reads the parent's turn still continues it.
    inSession(7, 2000, [1, 2, 5]);
    inSession(1, 2500, [41]);
    expect(p.victim()).toBe(3);
  });

  it("a session id keeps another session's re-read from continuing a conversation", () => {
    for (const sessions of [true, false]) {
      const p = new ReturnTimePolicy<number>(10);
      const resident = new Set<number>();
      const send2 = (session: number, now: number, keys: number[]): void => {
        request++;
        const info = (i: number): AccessInfo => ({
          ...at(now, i, keys.length),
          ...(sessions ? { session } : {}),
        });
        keys.forEach((k, i) => (resident.has(k) ? p.touch(k, info(i)) : p.miss(k, info(i))));
        keys.forEach((k, i) => {
          if (resident.has(k)) p.touch(k, info(i));
          else {
            p.insert(k, info(i));
            resident.add(k);
          }
        });
      };
      send2(5, 0, [20, 21]);
      send2(1, 500, [1, 2, 3]);
      send2(9, 1000, [1, 4]); // another session shares block 1 (a third of session 1's turn)
      send2(5, 1500, [22]);
      // Without session ids the shared block makes it a continuation, and 2, 3 dead.
      expect(p.victim()).toBe(sessions ? 21 : 3);
    }
  });

  it("takes the engine's 'closed' hint: the conversation's blocks go first", () => {
    const p = new ReturnTimePolicy<number>(10);
    const resident = new Set<number>();
    send(p, 0, [20, 21], resident); // an older conversation, no hint
    request++;
    const closed = (i: number): AccessInfo => ({ ...at(1000, i, 2), hint: 'closed' });
    [1, 2].forEach((k, i) => p.miss(k, closed(i)));
    [1, 2].forEach((k, i) => p.insert(k, closed(i)));
    send(p, 2000, [30], resident); // the next request ends the hinted one
    expect(p.victim()).toBe(2);
    p.remove(2);
    expect(p.victim()).toBe(1);
    p.remove(1);
    expect(p.victim()).toBe(21);
  });

  it('evicts an orphan (its parent was evicted) before anything else', () => {
    const p = new ReturnTimePolicy<number>(10);
    const resident = new Set<number>();
    send(p, 0, [1, 2], resident); // a shared prefix, read last by ...
    send(p, 10, [1, 2, 3, 4], resident); // ... this request; 3 → 4 hang below 2
    send(p, 20, [1, 2], resident); // 1, 2 move to a newer group
    send(p, 30, [9], resident);
    p.remove(2); // another tier's decision, say
    expect(p.victim()).toBe(3);
    p.remove(3);
    expect(p.victim()).toBe(4);
  });

  it('decides by learned return times: keeps the class that comes back, evicts the one that does not', () => {
    // A small ghost memory (10 keys), so what never comes back is forgotten, and censored, soon.
    const p = new ReturnTimePolicy<number>(10, { ghosts: 1 });
    const resident = new Set<number>();
    const drop = (keys: number[]): void => {
      for (const k of keys) {
        p.remove(k);
        resident.delete(k);
      }
    };
    let key = 100;
    for (let c = 0; c < 40; c++) {
      const t0 = c * 1_000_000;
      // A quick conversation: each turn re-reads the last and comes back 2 s later, 8 turns.
      const chain: number[] = [];
      for (let turn = 0; turn < 8; turn++) {
        chain.push(key++);
        send(p, t0 + turn * 2000, [...chain], resident);
      }
      drop(chain);
      // One-shot requests that never come back.
      const once = [key++, key++, key++];
      once.forEach((k, i) => send(p, t0 + 500_000 + i, [k], resident));
      drop(once);
    }
    const now = 50_000_000;
    send(p, now, [1], resident); // a one-shot, older than ...
    send(p, now + 1000, [2], resident);
    send(p, now + 3000, [2, 3], resident); // ... a conversation in its second, quick turn ...
    send(p, now + 3500, [4], resident); // ... and a younger one-shot
    // LRU would evict 1, then 2. The learned curves keep the conversation over both one-shots.
    const first = p.victim()!;
    expect([1, 4]).toContain(first);
    p.remove(first);
    expect([1, 4]).toContain(p.victim());
    expect(p.model.hazard(0, binOf(2000))).toBeLessThan(p.model.hazard(1, binOf(2000)));
  });

  it('exact: evicts the lowest-valued group of a class even when it is not the oldest', () => {
    for (const exact of [true, false]) {
      const p = new ReturnTimePolicy<number>(10, { exact });
      const resident = new Set<number>();
      send(p, 0, [1, 2], resident);
      send(p, 60_000, [3, 4], resident);
      send(p, 120_000, [5], resident);
      // A first-turn class whose value rises with idle time (a tool call of typical duration),
      // and the request just seen (idle 0) worth most.
      for (let b = 0; b < BINS; b++) p.model.index[b] = b === 0 ? 1000 : b;
      // At 120 s, [3, 4] (idle 60 s) is worth less than [1, 2] (idle 120 s).
      expect(p.victim()).toBe(exact ? 4 : 2);
      p.remove(exact ? 4 : 2);
      expect(p.victim()).toBe(exact ? 3 : 1);
    }
  });

  it('live: conversations still away count as exposure in the bins they passed', () => {
    const hazards: number[] = [];
    for (const live of [true, false]) {
      const p = new ReturnTimePolicy<number>(100, { live });
      const resident = new Set<number>();
      send(p, 0, [1, 2], resident);
      send(p, 2000, [1, 2, 3], resident); // a return after 2 s (class 0), now in class 2
      for (let i = 0; i < 10; i++) send(p, 3000 + i, [10 + i], resident); // ten first turns, waiting
      send(p, 100_000, [50], resident); // still undecided: not counted
      p.model.rebuild();
      const b = binOf(2000);
      if (live) {
        expect(p.model.live[b]).toBe(10);
        expect(p.model.live[2 * BINS + b]).toBe(1);
        expect(p.model.live[p.model.classes * BINS + b]).toBe(11);
        expect(p.model.live[binOf(100_000)]).toBe(0);
      } else {
        expect(p.model.live.every((x) => x === 0)).toBe(true);
      }
      hazards.push(p.model.hazard(0, b));
    }
    // Ten waits past 2 s lower the estimated chance of a return at 2 s.
    expect(hazards[0]).toBeLessThan(hazards[1]! / 2);
  });

  it("soonClasses: a 'soon' hint keeps the request's gap and run class, in a class of its own", () => {
    const classes: number[] = [];
    for (const soonClasses of [true, false]) {
      const p = new ReturnTimePolicy<number>(10, { soonClasses });
      const resident = new Set<number>();
      const hinted = (now: number, keys: number[]): void => {
        request++;
        const info = (i: number): AccessInfo => ({ ...at(now, i, keys.length), hint: 'soon' });
        keys.forEach((k, i) => (resident.has(k) ? p.touch(k, info(i)) : p.miss(k, info(i))));
        keys.forEach((k, i) => {
          if (resident.has(k)) p.touch(k, info(i));
          else {
            p.insert(k, info(i));
            resident.add(k);
          }
        });
      };
      send(p, 0, [1, 2], resident);
      hinted(2000, [1, 2, 3]); // continues after 2 s: quick run 1 (class 2), hinted
      send(p, 3000, [9], resident); // ends it
      const inner = p as unknown as {
        t: { gClass: Uint8Array };
        l: { aux: Int32Array; find(k: number): number };
      };
      classes.push(inner.t.gClass[inner.l.aux[inner.l.find(3)]!]!);
    }
    // With soonClasses: 15 + class 2; without: the one 'soon' class (13).
    expect(classes).toEqual([17, 13]);
  });

  it('keeps its state bounded: ghosts at most ghosts × capacity, groups by the keys it keeps', () => {
    const capacity = 64;
    const policy = new ReturnTimePolicy<number>(capacity, { ghosts: 2 });
    const index = new BlockIndex<number>([{ name: 'c', capacity, policy }], {
      ids: new DenseKeyIds(1 << 16),
    });
    let seed = 7;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const convs: number[][] = [];
    let next = 0;
    let hits = 0;
    for (let r = 0; r < 20_000; r++) {
      let chain: number[];
      const c = rand(50);
      if (convs[c] === undefined || rand(10) === 0) convs[c] = [];
      chain = convs[c]!;
      chain = [...chain, ...Array.from({ length: 1 + rand(4) }, () => next++)];
      convs[c] = chain;
      const info = (i: number): AccessInfo => ({
        now: r * 100,
        priority: 0,
        depth: i,
        chainLength: chain.length,
        request: r,
      });
      chain.forEach((k, i) => {
        if (index.access(k, info(i)) !== ABSENT) hits++;
      });
      chain.forEach((k, i) => index.place(k, 0, info(i), { length: 1, checksum: 0 }));
      expect(policy.size).toBeLessThanOrEqual(capacity);
      expect(policy.ghosts).toBeLessThanOrEqual(2 * capacity);
      expect(policy.groups).toBeLessThanOrEqual(policy.size + policy.ghosts + 1);
    }
    expect(policy.size).toBe(capacity);
    expect(hits).toBeGreaterThan(0);
  });

  it('evicts, at every eviction, the least-valued live group (then the older) of all class lists', () => {
    const capacity = 48;
    const policy = new ReturnTimePolicy<number>(capacity);
    const inner = policy as unknown as {
      t: { gNext: Int32Array; gTime: Float64Array };
      l: { aux: Int32Array; sizes: Int32Array; find(k: number): number };
      now: number;
    };
    // The least group by (value, time, class, place), walking every class list in full.
    const least = (): number => {
      const { gNext, gTime } = inner.t;
      let best = 0;
      let bestValue = Infinity;
      let bestTime = Infinity;
      for (let c = 0; c < CLASSES; c++) {
        for (let g = gNext[c]!; g !== c; g = gNext[g]!) {
          const v = policy.model.index[c * BINS + binOf(inner.now - gTime[g]!)]!;
          if (v < bestValue || (v === bestValue && gTime[g]! < bestTime)) {
            best = g;
            bestValue = v;
            bestTime = gTime[g]!;
          }
        }
      }
      return best;
    };
    let checked = 0;
    const victim = policy.victim.bind(policy);
    policy.victim = (evictable) => {
      const key = victim(evictable);
      // Orphans and dead groups go first; the learned values decide among the live groups.
      if (key !== undefined && inner.l.sizes[ORPHAN] === 0 && inner.t.gNext[DEAD] === DEAD) {
        expect(inner.l.aux[inner.l.find(key)]).toBe(least());
        checked++;
      }
      return key;
    };
    const index = new BlockIndex<number>([{ name: 'c', capacity, policy }], {
      ids: new DenseKeyIds(1 << 16),
    });
    let seed = 11;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const convs: number[][] = [];
    let next = 0;
    let now = 0;
    for (let r = 0; r < 6000; r++) {
      // Gaps from none (requests at the same time) to minutes, so values and times tie and differ.
      if (rand(3) !== 0) now += rand(4) === 0 ? rand(300_000) : rand(20_000);
      const c = rand(30);
      if (convs[c] === undefined || rand(12) === 0) convs[c] = [];
      const chain = [...convs[c], ...Array.from({ length: 1 + rand(6) }, () => next++)];
      convs[c] = chain;
      const info = (i: number): AccessInfo => ({
        now,
        priority: 0,
        depth: i,
        chainLength: chain.length,
        request: r,
      });
      chain.forEach((k, i) => index.access(k, info(i)));
      chain.forEach((k, i) => index.place(k, 0, info(i), { length: 1, checksum: 0 }));
    }
    expect(checked).toBeGreaterThan(10_000);
  });

  it('is registered by name and wrapped for priorities', () => {
    expect(policyByName<number>('return-time', 10).name).toBe('return-time');
  });
});

describe('SurvivalModel', () => {
  it('counts censored waits as survival, so a class that never returns learns a low value', () => {
    const m = new SurvivalModel(2, 1);
    for (let i = 0; i < 50; i++) m.returned(0, 3000); // class 0: back after 3 s
    for (let i = 0; i < 50; i++) m.returned(1, 3000); // class 1: the same returns ...
    for (let i = 0; i < 200; i++) m.censored(1, 3_600_000); // ... and many never came back
    expect(m.hazard(1, binOf(3000))).toBeLessThan(m.hazard(0, binOf(3000)));
    // Censoring adds exposure only before the censoring time: no events there, no hazard change
    // past it beyond the pooled prior.
    expect(m.atRisk[1 * BINS + binOf(3_600_000)]).toBe(0);
    expect(m.atRisk[1 * BINS + binOf(3_600_000) - 1]).toBe(200);
    expect(m.value(1, 0)).toBeLessThan(m.value(0, 0));
    // Past the gap everyone returned at, the index falls: the conversation is probably over.
    expect(m.value(0, 60_000)).toBeLessThan(m.value(0, 0));
  });

  it('bins log-spaced gaps and clamps the ends', () => {
    expect(binOf(0)).toBe(0);
    expect(binOf(-5)).toBe(0);
    expect(binOf(1000)).toBe(4); // 4 bins per octave of (1 + gap / 1 s)
    expect(binOf(1e12)).toBe(BINS - 1);
  });
});
