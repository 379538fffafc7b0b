/**
 * What the `return-time` policy (return-time.ts) tells predictive prefetch: the remembered keys
 * of the groups worth most now (forecast), a key's worth and the victim's worth, all read off its
 * key lists, group table and learned curves without changing them.
 */
import type { KeyLists } from './list.js';
import { ALIVE, CLASSES, DEAD, GHOST, ORPHAN, PENDING } from './return-classes.js';
import type { ReturnGroups } from './return-groups.js';
import { BINS, type SurvivalModel } from './survival.js';

/** What group g is worth at `now`: its class's index at its idle time; 0 when it is over. */
export function groupWorth(t: ReturnGroups, m: SurvivalModel, g: number, now: number): number {
  if (t.gState[g] !== ALIVE) return t.gState[g] === PENDING ? Infinity : 0;
  return m.value(t.gClass[g]!, Math.max(0, now - t.gTime[g]!));
}

/**
 * Remembered keys of the groups worth most at `now`, best group first, each group's blocks root
 * first (its ghosts were evicted deepest first, so the newest ghost is its shallowest). Scans at
 * most `scan` of the newest ghosts: a bounded cost per call, and the groups evicted long ago are
 * worth little anyway (within a class the index falls with idle time).
 */
export function forecastKeys<K>(
  l: KeyLists<K>,
  t: ReturnGroups,
  m: SurvivalModel,
  now: number,
  maxKeys: number,
  scan: number,
): K[] {
  if (!(maxKeys > 0)) return [];
  const found = new Map<number, { value: number; keys: K[] }>();
  let seen = 0;
  for (let n = l.prev[GHOST]!; n !== GHOST && seen < scan; n = l.prev[n]!, seen++) {
    const g = l.aux[n]!;
    if (t.gSerial[g] !== l.tag[n] || t.gState[g] !== ALIVE) continue;
    let e = found.get(g);
    if (!e) {
      e = { value: groupWorth(t, m, g, now), keys: [] };
      if (!(e.value > 0)) continue;
      found.set(g, e);
    }
    e.keys.push(l.keys[n] as K);
  }
  const groups = [...found.values()].sort((a, b) => b.value - a.value);
  const out: K[] = [];
  for (const e of groups) {
    for (const k of e.keys) {
      if (out.length >= maxKeys) return out;
      out.push(k);
    }
  }
  return out;
}

/** What `key` is worth at `now` (-1: not known; 0: an orphan or a block of no live group). */
export function keyWorth<K>(
  l: KeyLists<K>,
  t: ReturnGroups,
  m: SurvivalModel,
  key: K,
  now: number,
): number {
  const n = l.find(key);
  if (n === 0) return -1;
  const g = l.aux[n]!;
  if (l.list[n] === GHOST) return t.gSerial[g] === l.tag[n] ? groupWorth(t, m, g, now) : -1;
  return l.list[n] === ORPHAN || g === 0 ? 0 : groupWorth(t, m, g, now);
}

/** What the next victim is worth at `now`: 0 while orphans or dead groups go first. */
export function victimWorthOf<K>(
  l: KeyLists<K>,
  t: ReturnGroups,
  m: SurvivalModel,
  now: number,
): number {
  if (l.sizes[ORPHAN]! > 0 || t.gNext[DEAD] !== DEAD) return 0;
  let best = Infinity;
  for (let c = 0; c < CLASSES; c++) {
    const g = t.gNext[c]!;
    if (g !== c) best = Math.min(best, groupWorth(t, m, g, now));
  }
  return best === Infinity ? 0 : best;
}

/**
 * Bypass: whether the current request's group g (idle 0) is worth at least victim group v at
 * `now`; always while g's class has fewer than `known` conversations resolved.
 */
export function worthAtLeast(
  t: ReturnGroups,
  m: SurvivalModel,
  g: number,
  v: number,
  now: number,
  known: number,
): boolean {
  const c = t.gClass[g]!;
  if (m.atRisk[c * BINS]! < known) return true;
  return m.value(c, 0) >= m.value(t.gClass[v]!, now - t.gTime[v]!);
}
