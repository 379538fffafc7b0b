/**
 * The group table of the `return-time` policy (return-time.ts): per group, typed arrays of its
 * chain of blocks, lineage and lists; the time-ordered list per class (and the dead list), the
 * unordered list of live groups per class (for the exposure), and the exact-victim search.
 * Group ids below LISTS are the list sentinels; a freed id is reused.
 */
import { CLASSES, DEAD, FREE, GONE, LISTS, PENDING, UNLISTED } from './return-classes.js';
import { BINS, binOf } from './survival.js';

/** A copy of `a` in a new array of `size` elements. */
export function grow<T extends Int32Array | Uint8Array | Float64Array>(a: T, size: number): T {
  const b = new (a.constructor as new (n: number) => T)(size);
  b.set(a);
  return b;
}

export class ReturnGroups {
  /** The group's chain of blocks: shallowest and deepest node, count and peak count. */
  gHead: Int32Array = new Int32Array(16);
  gTail: Int32Array = new Int32Array(16);
  gCount: Int32Array = new Int32Array(16);
  gGhosts: Int32Array = new Int32Array(16);
  gPeak: Int32Array = new Int32Array(16);
  gState: Uint8Array = new Uint8Array(16);
  gClass: Uint8Array = new Uint8Array(16);
  gQuick: Int32Array = new Int32Array(16);
  gTime: Float64Array = new Float64Array(16);
  /** Changes whenever the id is reused: a ghost's tag names the group it was in (-1: free). */
  gSerial: Float64Array = new Float64Array(16);
  gSession: Float64Array = new Float64Array(16);
  /** The class or dead list the group is on (UNLISTED: none), oldest first. */
  gPrev: Int32Array = new Int32Array(16);
  gNext: Int32Array = new Int32Array(16);
  gList: Uint8Array = new Uint8Array(16);
  /** Live groups (waiting for a return), per class, in no order: for the exposure count. */
  aPrev: Int32Array = new Int32Array(16);
  aNext: Int32Array = new Int32Array(16);
  /** Per node (a block): its group's chain, deeper and shallower neighbour (0: none). */
  bNext: Int32Array = new Int32Array(16);
  bPrev: Int32Array = new Int32Array(16);
  /** Counts listings that may undercut the cached pick (see undercuts). */
  private listed = 0;
  /**
   * Whether every class list runs oldest first (staging puts an old group first): then the
   * pick is the least by (value, time, class, place) and a listing can be checked against it.
   */
  private ordered = true;
  private readonly freeGroups: number[] = [];
  private used = LISTS;
  private serial = 0;
  /** The exact victim group chosen while the clock and the model stood still (0: none). */
  private pick = 0;
  private pickSerial = -1;
  private pickListed = -1;
  /** The pick's value, time and class, and the clock and index table it was chosen with. */
  private pickValue = Infinity;
  private pickTime = Infinity;
  private pickClass = 0;
  private pickNow = NaN;
  private pickIndex: Float64Array | undefined = undefined;
  /** Per class: the head group whose value was last computed, and that value. */
  private readonly headGroup = new Int32Array(CLASSES);
  private readonly headSerial = new Float64Array(CLASSES);
  private readonly headValue = new Float64Array(CLASSES);

  constructor() {
    // The list sentinels must fit in the group arrays.
    this.growGroups(LISTS + 1);
    for (let g = 0; g < LISTS; g++) {
      this.gPrev[g] = g;
      this.gNext[g] = g;
      this.aPrev[g] = g;
      this.aNext[g] = g;
    }
  }

  /** Groups in use. */
  get size(): number {
    return this.used - LISTS - this.freeGroups.length;
  }

  /** A new pending group, on no list, started at `now`. */
  create(now: number): number {
    let g = this.freeGroups.pop();
    if (g === undefined) {
      g = this.used++;
      if (g >= this.gHead.length) this.growGroups(g + 1);
    }
    this.gHead[g] = 0;
    this.gTail[g] = 0;
    this.gCount[g] = 0;
    this.gGhosts[g] = 0;
    this.gPeak[g] = 0;
    this.gState[g] = PENDING;
    this.gClass[g] = 0;
    this.gQuick[g] = 0;
    this.gTime[g] = now;
    this.gSerial[g] = ++this.serial;
    this.gSession[g] = -1;
    this.gList[g] = UNLISTED;
    return g;
  }

  /** Frees group g (on no list, not live) for reuse. */
  release(g: number): void {
    this.unlist(g);
    this.gState[g] = FREE;
    this.gSerial[g] = -1;
    this.freeGroups.push(g);
  }

  private growGroups(min: number): void {
    let size = this.gHead.length * 2;
    while (size < min) size *= 2;
    this.gHead = grow(this.gHead, size);
    this.gTail = grow(this.gTail, size);
    this.gCount = grow(this.gCount, size);
    this.gGhosts = grow(this.gGhosts, size);
    this.gPeak = grow(this.gPeak, size);
    this.gState = grow(this.gState, size);
    this.gClass = grow(this.gClass, size);
    this.gQuick = grow(this.gQuick, size);
    this.gTime = grow(this.gTime, size);
    this.gSerial = grow(this.gSerial, size);
    this.gSession = grow(this.gSession, size);
    this.gPrev = grow(this.gPrev, size);
    this.aPrev = grow(this.aPrev, size);
    this.aNext = grow(this.aNext, size);
    this.gNext = grow(this.gNext, size);
    this.gList = grow(this.gList, size);
  }

  /** Makes room for node n in the chains. */
  growNodes(n: number): void {
    if (n < this.bNext.length) return;
    let size = this.bNext.length * 2;
    while (size <= n) size *= 2;
    this.bNext = grow(this.bNext, size);
    this.bPrev = grow(this.bPrev, size);
  }

  /** Appends node n (in no group) as the deepest block of group g; lists g if it was not. */
  join(n: number, g: number): void {
    const t = this.gTail[g]!;
    this.bPrev[n] = t;
    this.bNext[n] = 0;
    if (t === 0) this.gHead[g] = n;
    else this.bNext[t] = n;
    this.gTail[g] = n;
    if (++this.gCount[g]! > this.gPeak[g]!) this.gPeak[g] = this.gCount[g]!;
    if (this.gList[g] === UNLISTED && this.gState[g] !== PENDING) {
      this.list(g, this.gState[g] === GONE ? DEAD : this.gClass[g]!);
    }
  }

  /** Takes node n out of group g's chain; returns the blocks left in g. */
  unchain(n: number, g: number): number {
    const p = this.bPrev[n]!;
    const q = this.bNext[n]!;
    if (p === 0) this.gHead[g] = q;
    else this.bNext[p] = q;
    if (q === 0) this.gTail[g] = p;
    else this.bPrev[q] = p;
    return --this.gCount[g]!;
  }

  /** Takes group g off its list, if any. */
  unlist(g: number): void {
    if (this.gList[g] === UNLISTED) return;
    const p = this.gPrev[g]!;
    const n = this.gNext[g]!;
    this.gNext[p] = n;
    this.gPrev[n] = p;
    this.gList[g] = UNLISTED;
  }

  /** Puts group g at the young end of list `to`. */
  list(g: number, to: number): void {
    this.unlist(g);
    const p = this.gPrev[to]!;
    if (to < CLASSES && this.undercuts(g, to, p)) this.listed++;
    this.gPrev[g] = p;
    this.gNext[g] = to;
    this.gNext[p] = g;
    this.gPrev[to] = g;
    this.gList[g] = to;
  }

  /**
   * Whether group g, put after `tail` at the young end of class list `to`, may change the pick:
   * it comes before the pick in (value, time, class, place), or the pick itself moves behind a
   * group of its own time. A listing that cannot only saves the walk: the pick stays the least.
   */
  private undercuts(g: number, to: number, tail: number): boolean {
    const t = this.gTime[g]!;
    if (tail !== to && t < this.gTime[tail]!) this.ordered = false;
    const index = this.pickIndex;
    if (this.pick === 0 || !this.ordered || index === undefined) return true;
    if (g === this.pick) return to !== this.pickClass || (tail !== to && this.gTime[tail] === t);
    const v = index[to * BINS + binOf(this.pickNow - t)]!;
    if (v !== this.pickValue) return v < this.pickValue;
    if (t !== this.pickTime) return t < this.pickTime;
    return to < this.pickClass;
  }

  /** Puts group g at the oldest end of list `to`. */
  listOldest(g: number, to: number): void {
    this.ordered = false;
    this.unlist(g);
    const h = this.gNext[to]!;
    this.gPrev[g] = to;
    this.gNext[g] = h;
    this.gPrev[h] = g;
    this.gNext[to] = g;
    this.gList[g] = to;
  }

  /** Counts group g among the live groups of class c. */
  listAlive(g: number, c: number): void {
    const n = this.aNext[c]!;
    this.aPrev[g] = c;
    this.aNext[g] = n;
    this.aPrev[n] = g;
    this.aNext[c] = g;
  }

  unlistAlive(g: number): void {
    const p = this.aPrev[g]!;
    const n = this.aNext[g]!;
    this.aNext[p] = n;
    this.aPrev[n] = p;
  }

  /** Adds the bins passed by every live group at `now`, per class and pooled. */
  exposure(now: number, live: Float64Array): void {
    const pool = CLASSES * BINS;
    for (let c = 0; c < CLASSES; c++) {
      const o = c * BINS;
      // Count groups by their current bin, then each bin below it was passed.
      for (let g = this.aNext[c]!; g !== c; g = this.aNext[g]!) {
        const b = binOf(now - this.gTime[g]!);
        if (b > 0) live[o + b - 1]!++;
      }
      for (let b = BINS - 2; b >= 0; b--) live[o + b]! += live[o + b + 1]!;
      for (let b = 0; b < BINS; b++) live[pool + b]! += live[o + b]!;
    }
  }

  /**
   * The lowest-valued listed live group at `now` by the index table (ties: the older). Within a
   * class the list runs oldest first, so idle bins fall along it: a class is walked only down to
   * the first group in its cheapest bin among the bins present. The choice holds while the clock
   * and the model stand still (`fresh`: a group's value does not depend on its size), until the
   * group empties or changes list.
   */
  lowest(index: Float64Array, now: number, fresh: boolean): number {
    const g0 = this.pick;
    if (
      fresh &&
      g0 !== 0 &&
      this.pickListed === this.listed &&
      this.gSerial[g0] === this.pickSerial &&
      this.gCount[g0]! > 0 &&
      this.gList[g0]! < CLASSES
    ) {
      return g0;
    }
    let best = 0;
    let bestValue = Infinity;
    let bestTime = Infinity;
    let bestClass = 0;
    for (let c = 0; c < CLASSES; c++) {
      const first = this.gNext[c]!;
      if (first === c) continue;
      const hi = binOf(now - this.gTime[first]!);
      const lo = binOf(now - this.gTime[this.gPrev[c]!]!);
      let floor = Infinity;
      for (let b = Math.min(lo, hi); b <= Math.max(lo, hi); b++) {
        const v = index[c * BINS + b]!;
        if (v < floor) floor = v;
      }
      if (floor > bestValue) continue;
      let lastBin = -1;
      let v = Infinity;
      for (let g = first; g !== c; g = this.gNext[g]!) {
        const b = binOf(now - this.gTime[g]!);
        if (b !== lastBin) {
          lastBin = b;
          v = index[c * BINS + b]!;
        }
        if (v < bestValue || (v === bestValue && this.gTime[g]! < bestTime)) {
          best = g;
          bestValue = v;
          bestTime = this.gTime[g]!;
          bestClass = c;
        }
        if (v <= floor) break;
      }
    }
    this.pick = best;
    this.pickListed = this.listed;
    this.pickSerial = best === 0 ? -1 : this.gSerial[best]!;
    this.pickValue = bestValue;
    this.pickTime = bestTime;
    this.pickClass = bestClass;
    this.pickNow = now;
    this.pickIndex = index;
    return best;
  }

  /**
   * The class head (oldest group) of lowest value at `now` (ties: the older). Within one request
   * the clock stands still (`fresh`): a class head's value is computed once.
   */
  lowestHead(index: Float64Array, now: number, fresh: boolean): number {
    let best = 0;
    let bestValue = Infinity;
    let bestAge = -1;
    for (let c = 0; c < CLASSES; c++) {
      const g = this.gNext[c]!;
      if (g === c) continue;
      const age = now - this.gTime[g]!;
      let v: number;
      if (fresh && this.headGroup[c] === g && this.headSerial[c] === this.gSerial[g]) {
        v = this.headValue[c]!;
      } else {
        v = index[c * BINS + binOf(age)]!;
        this.headGroup[c] = g;
        this.headSerial[c] = this.gSerial[g]!;
        this.headValue[c] = v;
      }
      if (v < bestValue || (v === bestValue && age > bestAge)) {
        best = g;
        bestValue = v;
        bestAge = age;
      }
    }
    return best;
  }

  /** The deepest block of group g whose key passes `ok` (0: none). */
  deepest<K>(g: number, keys: (K | undefined)[], ok?: (key: K) => boolean): number {
    for (let n = this.gTail[g]!; n !== 0; n = this.bPrev[n]!) {
      if (!ok || ok(keys[n] as K)) return n;
    }
    return 0;
  }
}
