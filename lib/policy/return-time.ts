/**
 * `return-time`: eviction by when a conversation is expected to come back.
 *
 * - Groups: the blocks a request read or placed form its group (a block belongs to the last
 *   request that touched it). A group is evicted from its deepest block up, so chains stay
 *   contiguous.
 * - Evicted first: orphans (a block whose parent, the block before it in the last request that
 *   placed both, was evicted: no prefix lookup can reach it), then dead groups (what is left of a
 *   request after the same conversation's next request re-read the rest).
 * - Lineages: a request continues an earlier one when it re-reads (or misses on the remembered
 *   keys of) a large part of that request's group; no session id is needed. `AccessInfo.session`,
 *   when given, narrows the candidates to the same session's groups (it does not override the
 *   re-reads: a sub-agent's requests carry their parent's session id).
 * - Learned return times (survival.ts): per class of lineage (first turn; previous gap short,
 *   medium or long × quick turns in a row; each again when the engine hinted 'soon'), the gap to the next request, censored when a group is
 *   forgotten without a return; conversations still away count as exposure in the bins they
 *   passed. The live group with the lowest Gittins-style index is evicted (the true minimum: the
 *   index rises with idle time where the hazard rises, e.g. a tool call of typical duration).
 *
 * Cost: one key lookup per access; per request (and whenever the chosen group empties) one walk
 * per class down its time-ordered list to the first group in the cheapest bin present; every 64
 * curve updates a walk of the live groups for the exposure.
 * State: one node per resident or remembered key (ghosts: at most `ghosts` × capacity) and one
 * record per group that still has such a key.
 */
import { KeyLists } from './list.js';
import type { AccessInfo, EvictionPolicy } from './policy.js';
import { BINS, binOf, SurvivalModel } from './survival.js';

const LIVE = 0;
const ORPHAN = 1;
const GHOST = 2;
const FIRST_NODE = 3;

/** Previous gap below this (ms) is short, below MEDIUM medium, else long. */
const SHORT = 15_000;
const MEDIUM = 120_000;
/** Lineage classes: first turn, then 3 gap classes × 4 run-length classes, then hinted 'soon'. */
const SOON = 13;
/** Blocks a request read from another conversation's group (a shared prefix), with `shared`. */
const SHARED = 14;
/** With `soonClasses`: a hinted request's class is its unhinted class (0 .. SOON-1) + SOON_BASE. */
const SOON_BASE = 15;
const CLASSES = SOON_BASE + SOON;
/** Group lists: one per class, then the dead list; list sentinels are groups 0 .. LISTS-1. */
const DEAD = CLASSES;
const LISTS = CLASSES + 1;
/** Group states. */
const FREE = 0;
const PENDING = 1;
const ALIVE = 2;
const GONE = 3;

export interface ReturnTimeOptions {
  /** Keys remembered after eviction (to see a conversation come back), × capacity. Default 4. */
  ghosts?: number;
  /** A request continues a group when it re-reads at least this share of it. Default 0.3. */
  continues?: number;
  /** Bypass: a new block is not admitted when its group is worth less than the victim's. */
  bypass?: boolean;
  /**
   * Bypass only for a class with at least this many conversations resolved (returned or
   * forgotten); 0: always. Default 0.
   */
  bypassKnown?: number;
  /**
   * Exact victim: the lowest-valued live group of each class, not only its oldest (the index
   * need not fall with idle time: a class whose hazard rises). Default true.
   */
  exact?: boolean;
  /**
   * Live exposure: conversations still away count as at risk in the bins they have passed (not
   * only once they return or are forgotten). Default true.
   */
  live?: boolean;
  /**
   * A request hinted 'soon' keeps its gap and run-length class, as a class of its own next to
   * the unhinted one (instead of one 'soon' class for all). Default true.
   */
  soonClasses?: boolean;
  /**
   * Shared prefixes: blocks a request read from a group other than its predecessor's go to a
   * group of their own class, whose return is the next read by anyone. Default false.
   */
  shared?: boolean;
  /** Weight (in conversations) of the pooled curve in each class's curve. Default 16. */
  prior?: number;
  /** Counts halve every this many updates. Default 32,768. */
  halfLife?: number;
  /** Share of the current bin counted as still to be held (see SurvivalModel). Default 1. */
  firstBin?: number;
}

/** A copy of `a` in a new array of `size` elements. */
function grow<T extends Int32Array | Uint8Array | Float64Array>(a: T, size: number): T {
  const b = new (a.constructor as new (n: number) => T)(size);
  b.set(a);
  return b;
}

function classOf(gap: number, quick: number): number {
  const g = gap < SHORT ? 0 : gap < MEDIUM ? 1 : 2;
  const q = quick === 0 ? 0 : quick <= 2 ? 1 : quick <= 7 ? 2 : 3;
  return 1 + g * 4 + q;
}

export class ReturnTimePolicy<K> implements EvictionPolicy<K> {
  readonly name = 'return-time';
  readonly model: SurvivalModel;
  private readonly l = new KeyLists<K>(3);
  private readonly ghostLimit: number;
  private readonly continues: number;
  private readonly bypass: boolean;
  private readonly bypassKnown: number;
  private readonly exact: boolean;
  private readonly shared: boolean;
  private readonly soonClasses: boolean;
  /** Per node: the group it was taken from by the current request (0: placed by it). */
  private fromG: Int32Array = new Int32Array(16);
  /** The exact victim group chosen while the clock and the model stood still (0: none). */
  private pick = 0;
  private pickSerial = -1;
  private pickListed = -1;
  /** Counts groups put on a class list (a new group may undercut the cached pick). */
  private listed = 0;
  // Per node: its group's chain (deeper / shallower neighbour), parent and child in the prefix tree.
  private bNext: Int32Array = new Int32Array(16);
  private bPrev: Int32Array = new Int32Array(16);
  private parent: Int32Array = new Int32Array(16);
  private child: Int32Array = new Int32Array(16);
  // Per group (ids below LISTS are the list sentinels).
  private gHead: Int32Array = new Int32Array(16);
  private gTail: Int32Array = new Int32Array(16);
  private gCount: Int32Array = new Int32Array(16);
  private gGhosts: Int32Array = new Int32Array(16);
  private gPeak: Int32Array = new Int32Array(16);
  private gState: Uint8Array = new Uint8Array(16);
  private gClass: Uint8Array = new Uint8Array(16);
  private gQuick: Int32Array = new Int32Array(16);
  private gTime: Float64Array = new Float64Array(16);
  private gSerial: Float64Array = new Float64Array(16);
  private gSession: Float64Array = new Float64Array(16);
  private gPrev: Int32Array = new Int32Array(16);
  private gNext: Int32Array = new Int32Array(16);
  private gList: Uint8Array = new Uint8Array(16);
  /** Live groups (waiting for a return), per class, in no order: for the exposure count. */
  private aPrev: Int32Array = new Int32Array(16);
  private aNext: Int32Array = new Int32Array(16);
  private freeGroups: number[] = [];
  private groupsUsed = LISTS;
  private serial = 0;
  /** The request being seen: its group, clock and chain, and its best predecessor so far. */
  private cur = 0;
  private curNow = NaN;
  private curChain = -1;
  private curRequest: number | undefined = undefined;
  private curSession = -1;
  private curHint: 'soon' | 'closed' | undefined = undefined;
  private decided = false;
  private cand = 0;
  private candSerial = -1;
  private candCount = 0;
  private lastNode = 0;
  private lastDepth = -1;
  private now = 0;
  /** Per class: the head group whose value was last computed, and that value. */
  private readonly headGroup = new Int32Array(CLASSES);
  private readonly headSerial = new Float64Array(CLASSES);
  private readonly headValue = new Float64Array(CLASSES);
  private valueNow = NaN;
  private valueVersion = -1;

  constructor(capacity: number, options: ReturnTimeOptions = {}) {
    this.ghostLimit = Math.max(1, Math.round((options.ghosts ?? 4) * capacity));
    this.continues = options.continues ?? 0.3;
    this.bypass = options.bypass ?? false;
    this.bypassKnown = options.bypassKnown ?? 0;
    this.exact = options.exact ?? true;
    this.shared = options.shared ?? false;
    this.soonClasses = options.soonClasses ?? true;
    this.model = new SurvivalModel(
      CLASSES,
      64,
      options.halfLife ?? 1 << 15,
      options.prior ?? 16,
      options.firstBin ?? 1,
    );
    // The list sentinels must fit in the group arrays.
    this.growGroups(LISTS + 1);
    for (let g = 0; g < LISTS; g++) {
      this.gPrev[g] = g;
      this.gNext[g] = g;
      this.aPrev[g] = g;
      this.aNext[g] = g;
    }
    if (options.live ?? true) this.model.exposure = (live) => this.exposure(live);
  }

  get size(): number {
    return this.l.sizes[LIVE]! + this.l.sizes[ORPHAN]!;
  }

  /** Groups kept (live, dead or remembered by ghosts): bounded by the keys kept. */
  get groups(): number {
    return this.groupsUsed - LISTS - this.freeGroups.length;
  }

  /** Ghost keys kept. */
  get ghosts(): number {
    return this.l.sizes[GHOST]!;
  }

  // ---- requests and lineages ----

  private begin(info: AccessInfo): void {
    const same =
      info.request !== undefined
        ? info.request === this.curRequest
        : info.now === this.curNow && info.chainLength === this.curChain;
    if (same) return;
    this.finish();
    this.curRequest = info.request;
    this.curNow = info.now;
    this.curChain = info.chainLength;
    this.curSession = info.session ?? -1;
    this.curHint = info.hint;
    if (info.now > this.now) this.now = info.now;
    this.cur = this.newGroup(info.now);
    this.decided = false;
    this.cand = 0;
    this.candCount = 0;
    this.lastNode = 0;
    this.lastDepth = -1;
  }

  /** Ends the current request. */
  private finish(): void {
    const g = this.cur;
    if (g === 0) return;
    if (!this.decided) this.decide();
    this.cur = 0;
    this.maybeFree(g);
  }

  /** Decides the current request's lineage (once its reads are seen) and lists its group. */
  private decide(): void {
    const g = this.cur;
    this.decided = true;
    let c = 0;
    let quick = 0;
    let p = this.cand;
    // A session id narrows the candidates (saw() skips other sessions' groups); the re-reads
    // still decide: a sub-agent's request carries its parent's session and continues nothing.
    if (this.curSession >= 0) this.gSession[g] = this.curSession;
    if (
      p !== 0 &&
      (this.gSerial[p] !== this.candSerial || this.candCount < this.continues * this.gPeak[p]!)
    ) {
      p = 0;
    }
    if (p !== 0 && (this.gState[p] === ALIVE || this.gState[p] === GONE)) {
      const gap = this.gTime[g]! - this.gTime[p]!;
      this.model.returned(this.gClass[p]!, gap);
      quick = gap < SHORT ? this.gQuick[p]! + 1 : 0;
      c = classOf(gap, quick);
      // What the next request did not re-read of p will not be read again.
      if (this.gState[p] === ALIVE) this.unlistAlive(p);
      this.gState[p] = GONE;
      if (this.gCount[p]! > 0) this.listGroup(p, DEAD);
      else this.maybeFree(p);
    }
    if (this.shared) this.split(g, p);
    const cand = this.cand;
    this.cand = 0;
    if (cand !== 0 && this.gSerial[cand] === this.candSerial) this.maybeFree(cand);
    if (this.curHint === 'soon') c = this.soonClasses ? SOON_BASE + c : SOON;
    this.gClass[g] = c;
    this.gQuick[g] = quick;
    if (this.curHint === 'closed') {
      // The engine says the conversation is over: nothing of it will be read again.
      this.gState[g] = GONE;
      if (this.gCount[g]! > 0) this.listGroup(g, DEAD);
      return;
    }
    this.gState[g] = ALIVE;
    this.listAlive(g, c);
    if (this.gCount[g]! > 0) this.listGroup(g, c);
  }

  /** A block of group g (or its ghost) was read by the current request. */
  private saw(g: number): void {
    if (g === this.cur || g < LISTS) return;
    if (this.gClass[g] === SHARED && this.gState[g] === ALIVE) return;
    const s = this.gSession[g]!;
    if (this.curSession >= 0 && s >= 0 && s !== this.curSession) return;
    if (g === this.cand && this.gSerial[g] === this.candSerial) this.candCount++;
    else {
      const old = this.cand;
      this.cand = g;
      if (old !== 0) this.maybeFree(old);
      this.candSerial = this.gSerial[g]!;
      this.candCount = 1;
    }
  }

  // ---- groups ----

  private newGroup(now: number): number {
    let g = this.freeGroups.pop();
    if (g === undefined) {
      g = this.groupsUsed++;
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
    this.gList[g] = 255;
    return g;
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

  private unlistGroup(g: number): void {
    if (this.gList[g] === 255) return;
    const p = this.gPrev[g]!;
    const n = this.gNext[g]!;
    this.gNext[p] = n;
    this.gPrev[n] = p;
    this.gList[g] = 255;
  }

  /** Puts group g at the young end of list `to`. */
  private listGroup(g: number, to: number): void {
    this.unlistGroup(g);
    this.listed++;
    const p = this.gPrev[to]!;
    this.gPrev[g] = p;
    this.gNext[g] = to;
    this.gNext[p] = g;
    this.gPrev[to] = g;
    this.gList[g] = to;
  }

  /**
   * Moves the blocks group g read from groups other than its predecessor p into a shared group
   * of their own; a shared group they came from has come back (once per request).
   */
  private split(g: number, p: number): void {
    let s = 0;
    for (let n = this.gHead[g]!; n !== 0;) {
      const next = this.bNext[n]!;
      const h = this.fromG[n]!;
      if (h !== 0 && h !== p) {
        if (this.gClass[h] === SHARED && this.gState[h] === ALIVE && this.gTime[h]! < this.now) {
          this.model.returned(SHARED, this.now - this.gTime[h]!);
          this.gTime[h] = this.now;
          if (this.gCount[h]! > 0) this.listGroup(h, SHARED);
        }
        if (s === 0) {
          s = this.newGroup(this.now);
          this.gState[s] = ALIVE;
          this.gClass[s] = SHARED;
          this.listAlive(s, SHARED);
        }
        this.leave(n);
        this.join(n, s);
      }
      this.fromG[n] = 0;
      n = next;
    }
  }

  private listAlive(g: number, c: number): void {
    const n = this.aNext[c]!;
    this.aPrev[g] = c;
    this.aNext[g] = n;
    this.aPrev[n] = g;
    this.aNext[c] = g;
  }

  private unlistAlive(g: number): void {
    const p = this.aPrev[g]!;
    const n = this.aNext[g]!;
    this.aNext[p] = n;
    this.aPrev[n] = p;
  }

  /** Adds the bins passed by every live group, per class and pooled (at each model rebuild). */
  private exposure(live: Float64Array): void {
    const pool = CLASSES * BINS;
    for (let c = 0; c < CLASSES; c++) {
      const o = c * BINS;
      // Count groups by their current bin, then each bin below it was passed.
      for (let g = this.aNext[c]!; g !== c; g = this.aNext[g]!) {
        const b = binOf(this.now - this.gTime[g]!);
        if (b > 0) live[o + b - 1]!++;
      }
      for (let b = BINS - 2; b >= 0; b--) live[o + b]! += live[o + b + 1]!;
      for (let b = 0; b < BINS; b++) live[pool + b]! += live[o + b]!;
    }
  }

  /** Frees group g once nothing refers to it; a lineage that never came back is censored. */
  private maybeFree(g: number): void {
    // The current request's candidate predecessor is kept until its lineage is decided.
    if (g === this.cur || this.gState[g] === FREE || (g === this.cand && !this.decided)) return;
    if (this.gCount[g]! > 0 || this.gGhosts[g]! > 0) return;
    if (this.gState[g] === ALIVE) {
      this.unlistAlive(g);
      this.model.censored(this.gClass[g]!, this.now - this.gTime[g]!);
    }
    this.unlistGroup(g);
    this.gState[g] = FREE;
    this.gSerial[g] = -1;
    this.freeGroups.push(g);
  }

  /** Appends node n (in no group) as the deepest block of group g. */
  private join(n: number, g: number): void {
    const t = this.gTail[g]!;
    this.bPrev[n] = t;
    this.bNext[n] = 0;
    if (t === 0) this.gHead[g] = n;
    else this.bNext[t] = n;
    this.gTail[g] = n;
    if (++this.gCount[g]! > this.gPeak[g]!) this.gPeak[g] = this.gCount[g]!;
    this.l.aux[n] = g;
    if (this.gList[g] === 255 && this.gState[g] !== PENDING) {
      this.listGroup(g, this.gState[g] === GONE ? DEAD : this.gClass[g]!);
    }
  }

  /** Takes node n out of its group (it stays in its key list). */
  private leave(n: number): void {
    const g = this.l.aux[n]!;
    if (g === 0) return;
    const p = this.bPrev[n]!;
    const q = this.bNext[n]!;
    if (p === 0) this.gHead[g] = q;
    else this.bNext[p] = q;
    if (q === 0) this.gTail[g] = p;
    else this.bPrev[q] = p;
    this.l.aux[n] = 0;
    if (--this.gCount[g]! === 0) {
      this.unlistGroup(g);
      this.maybeFree(g);
    }
  }

  // ---- keys ----

  private growNodes(n: number): void {
    if (n < this.bNext.length) return;
    let size = this.bNext.length * 2;
    while (size <= n) size *= 2;
    this.bNext = grow(this.bNext, size);
    this.bPrev = grow(this.bPrev, size);
    this.parent = grow(this.parent, size);
    this.child = grow(this.child, size);
    this.fromG = grow(this.fromG, size);
  }

  /** Node n is read or placed by the current request at `depth`. */
  private use(n: number, info: AccessInfo): void {
    const l = this.l;
    if (l.aux[n] !== this.cur) {
      this.fromG[n] = l.aux[n]!;
      this.leave(n);
      this.join(n, this.cur);
    }
    const at = this.lastNode;
    if (info.depth === this.lastDepth + 1 && at >= FIRST_NODE && l.list[at] !== GHOST && at !== n) {
      this.parent[n] = at;
      this.child[at] = n;
    } else if (info.depth === 0) {
      this.parent[n] = 0;
    }
    this.lastNode = n;
    this.lastDepth = info.depth;
  }

  insert(key: K, info: AccessInfo): void {
    this.begin(info);
    const l = this.l;
    let n = l.find(key);
    if (n !== 0 && l.list[n] === GHOST) {
      this.forgetGhost(n);
      n = 0;
    }
    if (n === 0) {
      n = l.add(key, LIVE);
      this.growNodes(n);
      this.fromG[n] = 0;
      l.aux[n] = 0;
      this.parent[n] = 0;
      this.child[n] = 0;
    } else if (l.list[n] === ORPHAN) {
      l.moveToTail(n, LIVE);
    }
    this.use(n, info);
  }

  touch(key: K, info: AccessInfo): void {
    this.begin(info);
    const l = this.l;
    const n = l.find(key);
    if (n === 0 || l.list[n] === GHOST) return;
    this.saw(l.aux[n]!);
    if (l.list[n] === ORPHAN) l.moveToTail(n, LIVE);
    this.use(n, info);
  }

  miss(key: K, info: AccessInfo): void {
    this.begin(info);
    const l = this.l;
    const n = l.find(key);
    if (n !== 0 && l.list[n] === GHOST) {
      const g = l.aux[n]!;
      if (this.gSerial[g] === l.tag[n]) this.saw(g);
    }
    this.lastNode = 0;
    this.lastDepth = info.depth;
  }

  private forgetGhost(n: number): void {
    const l = this.l;
    const g = l.aux[n]!;
    l.free(n);
    if (this.gSerial[g] === l.tag[n]) {
      this.gGhosts[g]!--;
      this.maybeFree(g);
    }
  }

  remove(key: K): void {
    const l = this.l;
    const n = l.find(key);
    if (n === 0 || l.list[n] === GHOST) return;
    // Its child can no longer be reached by a prefix lookup.
    const c = this.child[n]!;
    if (c >= FIRST_NODE && this.parent[c] === n && l.list[c] === LIVE && l.keys[c] !== undefined) {
      this.leave(c);
      l.moveToTail(c, ORPHAN);
    }
    this.child[n] = 0;
    if (this.parent[n]! !== 0 && this.child[this.parent[n]!] === n) this.child[this.parent[n]!] = 0;
    this.parent[n] = 0;
    const g = l.aux[n]!;
    const keep = l.list[n] === LIVE && g !== 0 && this.gState[g] !== GONE;
    // Counted as a ghost first, so that its group outlives the last resident block.
    if (keep) this.gGhosts[g]!++;
    this.leave(n);
    if (!keep) {
      l.free(n);
      return;
    }
    // Remember which group the key was in, to see its conversation come back.
    l.moveToTail(n, GHOST);
    l.aux[n] = g;
    l.tag[n] = this.gSerial[g]!;
    if (l.sizes[GHOST]! > this.ghostLimit) this.forgetGhost(l.head(GHOST));
  }

  victim(evictable?: (key: K) => boolean): K | undefined {
    const l = this.l;
    if (l.sizes[ORPHAN]! > 0) {
      const o = l.first(ORPHAN, evictable);
      if (o !== 0) return l.keys[o];
    }
    // The current request's lineage is decided before anything is evicted for it.
    if (this.cur !== 0 && !this.decided) this.decide();
    for (let g = this.gNext[DEAD]!; g !== DEAD; g = this.gNext[g]!) {
      const n = this.deepest(g, evictable);
      if (n !== 0) return l.keys[n];
    }
    let best = 0;
    let bestValue = Infinity;
    let bestAge = -1;
    const fresh = this.now === this.valueNow && this.model.version === this.valueVersion;
    this.valueNow = this.now;
    this.valueVersion = this.model.version;
    if (this.exact) {
      best = this.exactVictim(fresh);
      if (best !== 0) {
        const n = this.deepest(best, evictable);
        if (n !== 0) return l.keys[n];
      }
      const n = l.first(LIVE, evictable);
      return n === 0 ? undefined : l.keys[n];
    }
    for (let c = 0; c < CLASSES; c++) {
      const g = this.gNext[c]!;
      if (g === c) continue;
      const age = this.now - this.gTime[g]!;
      // Within one request the clock stands still: a class head's value is computed once.
      let v: number;
      if (fresh && this.headGroup[c] === g && this.headSerial[c] === this.gSerial[g]) {
        v = this.headValue[c]!;
      } else {
        v = this.model.value(c, age);
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
    if (best !== 0) {
      const n = this.deepest(best, evictable);
      if (n !== 0) return l.keys[n];
    }
    // Pinned or busy blocks in the way: the first evictable block of any group, oldest first.
    const n = l.first(LIVE, evictable);
    return n === 0 ? undefined : l.keys[n];
  }

  admit(_key: K, _info: AccessInfo, victim: K): boolean {
    if (!this.bypass || this.cur === 0) return true;
    const l = this.l;
    const n = l.find(victim);
    if (n === 0 || l.list[n] !== LIVE) return true;
    const v = l.aux[n]!;
    if (v === 0 || v === this.cur || this.gState[v] !== ALIVE) return true;
    if (!this.decided) this.decide();
    const c = this.gClass[this.cur]!;
    if (this.model.atRisk[c * BINS]! < this.bypassKnown) return true;
    const mine = this.model.value(c, 0);
    const theirs = this.model.value(this.gClass[v]!, this.now - this.gTime[v]!);
    return mine >= theirs;
  }

  /**
   * The lowest-valued live group (ties: the older). Within a class the list runs oldest first, so
   * idle bins fall along it: a class is walked only down to the first group in its cheapest bin
   * among the bins present. The choice holds while the clock and the model stand still (a
   * group's value does not depend on its size), until the group empties or changes list.
   */
  private exactVictim(fresh: boolean): number {
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
    const m = this.model;
    let best = 0;
    let bestValue = Infinity;
    let bestTime = Infinity;
    for (let c = 0; c < CLASSES; c++) {
      const first = this.gNext[c]!;
      if (first === c) continue;
      const hi = binOf(this.now - this.gTime[first]!);
      const lo = binOf(this.now - this.gTime[this.gPrev[c]!]!);
      let floor = Infinity;
      for (let b = Math.min(lo, hi); b <= Math.max(lo, hi); b++) {
        const v = m.index[c * BINS + b]!;
        if (v < floor) floor = v;
      }
      if (floor > bestValue) continue;
      let lastBin = -1;
      let v = Infinity;
      for (let g = first; g !== c; g = this.gNext[g]!) {
        const b = binOf(this.now - this.gTime[g]!);
        if (b !== lastBin) {
          lastBin = b;
          v = m.index[c * BINS + b]!;
        }
        if (v < bestValue || (v === bestValue && this.gTime[g]! < bestTime)) {
          best = g;
          bestValue = v;
          bestTime = this.gTime[g]!;
        }
        if (v <= floor) break;
      }
    }
    this.pick = best;
    this.pickListed = this.listed;
    this.pickSerial = best === 0 ? -1 : this.gSerial[best]!;
    return best;
  }

  /** The deepest evictable block of group g (0: none). */
  private deepest(g: number, evictable?: (key: K) => boolean): number {
    for (let n = this.gTail[g]!; n !== 0; n = this.bPrev[n]!) {
      if (!evictable || evictable(this.l.keys[n] as K)) return n;
    }
    return 0;
  }

  // ---- predictive prefetch (forecast, worth, victimWorth, stage) ----

  /** What group g is worth at `now`: its class's index at its idle time; 0 when it is over. */
  private groupWorth(g: number, now: number): number {
    if (this.gState[g] !== ALIVE) return this.gState[g] === PENDING ? Infinity : 0;
    return this.model.value(this.gClass[g]!, Math.max(0, now - this.gTime[g]!));
  }

  /**
   * Remembered keys of the groups worth most at `now`, best group first, each group's blocks
   * root first (its ghosts were evicted deepest first, so the newest ghost is its shallowest).
   * Scans at most `scan` of the newest ghosts: a bounded cost per call, and the groups evicted
   * long ago are worth little anyway (within a class the index falls with idle time).
   */
  forecast(now: number, maxKeys: number, scan = 4 * maxKeys + 1024): K[] {
    const l = this.l;
    // Between requests (the Warehouse's staging timer) time passes: victim() and admit() value
    // groups at this.now, which only requests moved, so it must see the forecast's clock too.
    if (now > this.now) this.now = now;
    if (!(maxKeys > 0)) return [];
    const found = new Map<number, { value: number; keys: K[] }>();
    let seen = 0;
    for (let n = l.prev[GHOST]!; n !== GHOST && seen < scan; n = l.prev[n]!, seen++) {
      const g = l.aux[n]!;
      if (this.gSerial[g] !== l.tag[n] || this.gState[g] !== ALIVE) continue;
      let e = found.get(g);
      if (!e) {
        e = { value: this.groupWorth(g, now), keys: [] };
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

  worth(key: K, now: number): number {
    const l = this.l;
    const n = l.find(key);
    if (n === 0) return -1;
    const g = l.aux[n]!;
    if (l.list[n] === GHOST) return this.gSerial[g] === l.tag[n] ? this.groupWorth(g, now) : -1;
    return l.list[n] === ORPHAN || g === 0 ? 0 : this.groupWorth(g, now);
  }

  victimWorth(now: number): number {
    // As in victim(): the current request's lineage is decided before its value is compared.
    if (this.cur !== 0 && !this.decided) this.decide();
    if (this.l.sizes[ORPHAN]! > 0 || this.gNext[DEAD] !== DEAD) return 0;
    let best = Infinity;
    for (let c = 0; c < CLASSES; c++) {
      const g = this.gNext[c]!;
      if (g !== c) best = Math.min(best, this.groupWorth(g, now));
    }
    return best === Infinity ? 0 : best;
  }

  stage(key: K, _now: number): boolean {
    const l = this.l;
    const n = l.find(key);
    if (n === 0 || l.list[n] !== GHOST) return false;
    const g = l.aux[n]!;
    if (this.gSerial[g] !== l.tag[n] || this.gState[g] !== ALIVE) return false;
    this.gGhosts[g]!--;
    l.moveToTail(n, LIVE);
    l.aux[n] = 0;
    // Staged root first: the group's deepest resident block is this one's parent.
    const t = this.gTail[g]!;
    this.parent[n] = t;
    this.child[n] = 0;
    if (t !== 0) this.child[t] = n;
    const listed = this.gList[g] !== 255;
    this.join(n, g);
    if (!listed) {
      // An old group: at the oldest end of its class, where victim() looks (not the newest end).
      this.unlistGroup(g);
      const c = this.gClass[g]!;
      const h = this.gNext[c]!;
      this.gPrev[g] = c;
      this.gNext[g] = h;
      this.gPrev[h] = g;
      this.gNext[c] = g;
      this.gList[g] = c;
    }
    return true;
  }
}
