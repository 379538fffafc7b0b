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
 *   medium or long × quick turns in a row; each again when the engine hinted 'soon'), the gap
 *   to the next request, censored when a group is forgotten without a return; conversations still away count as exposure in the bins they
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
import {
  ALIVE,
  FREE,
  LISTS,
  CLASSES,
  classOf,
  DEAD,
  FIRST_NODE,
  GHOST,
  GONE,
  LIVE,
  ORPHAN,
  type ReturnTimeOptions,
  withDefaults,
  SHARED,
  SHORT,
  SOON,
  SOON_BASE,
  UNLISTED,
} from './return-classes.js';
import { forecastKeys, keyWorth, victimWorthOf, worthAtLeast } from './return-forecast.js';
import { grow, ReturnGroups } from './return-groups.js';
import { PrefixLinks } from './return-links.js';
import { SurvivalModel } from './survival.js';

export type { ReturnTimeOptions } from './return-classes.js';

/** Requests whose group a later call can rejoin (calls in flight at once in a server). */
const REQUESTS_KEPT = 1024;

export class ReturnTimePolicy<K> implements EvictionPolicy<K> {
  readonly name = 'return-time';
  readonly model: SurvivalModel;
  private readonly l = new KeyLists<K>(3);
  private readonly o: Required<ReturnTimeOptions>;
  private readonly ghostLimit: number;
  /** Per node: the group it was taken from by the current request (0: placed by it). */
  private fromG: Int32Array = new Int32Array(16);
  private readonly links = new PrefixLinks();
  /** The group table. */
  private readonly t = new ReturnGroups();
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
  private valueNow = NaN;
  private valueVersion = -1;
  /** The node of the key victim() last returned: remove() of that key needs no lookup. */
  private victimNode = 0;

  constructor(capacity: number, options: ReturnTimeOptions = {}) {
    const o = (this.o = withDefaults(options));
    this.ghostLimit = Math.max(1, Math.round(o.ghosts * capacity));
    this.model = new SurvivalModel(CLASSES, 64, o.halfLife, o.prior, o.firstBin);
    if (o.live) this.model.exposure = (live) => this.t.exposure(this.now, live);
  }

  get size(): number {
    return this.l.sizes[LIVE]! + this.l.sizes[ORPHAN]!;
  }

  /** Groups kept (live, dead or remembered by ghosts): bounded by the keys kept. */
  get groups(): number {
    return this.t.size;
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
    this.cand = 0;
    this.candCount = 0;
    this.lastNode = 0;
    this.lastDepth = -1;
    // In a server, one request's calls (its get, then its put) interleave with other requests':
    // a later call of a request seen before rejoins its group, already decided, instead of
    // starting a group that would count as that request's own return after 0 ms.
    const back = info.request !== undefined ? this.reopen(info.request) : 0;
    if (back !== 0) {
      this.cur = back;
      this.decided = true;
      return;
    }
    this.cur = this.t.create(info.now);
    this.decided = false;
    if (info.request !== undefined) this.remember(info.request, this.cur);
  }

  /** Recent requests' groups (and their serials: group ids are reused), oldest first. */
  private readonly requestGroups = new Map<number, number>();
  private readonly requestSerials = new Map<number, number>();

  private remember(request: number, g: number): void {
    this.requestGroups.set(request, g);
    this.requestSerials.set(request, this.t.gSerial[g]!);
    if (this.requestGroups.size > REQUESTS_KEPT) {
      const oldest = this.requestGroups.keys().next().value!;
      this.requestGroups.delete(oldest);
      this.requestSerials.delete(oldest);
    }
  }

  /** The group of an earlier call of `request`, if it is still kept (0: none). */
  private reopen(request: number): number {
    const g = this.requestGroups.get(request);
    if (g === undefined || this.t.gSerial[g] !== this.requestSerials.get(request)) return 0;
    return g;
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
    if (this.curSession >= 0) this.t.gSession[g] = this.curSession;
    if (
      p !== 0 &&
      (this.t.gSerial[p] !== this.candSerial ||
        this.candCount < this.o.continues * this.t.gPeak[p]!)
    ) {
      p = 0;
    }
    if (p !== 0 && (this.t.gState[p] === ALIVE || this.t.gState[p] === GONE)) {
      const gap = this.t.gTime[g]! - this.t.gTime[p]!;
      this.model.returned(this.t.gClass[p]!, gap);
      quick = gap < SHORT ? this.t.gQuick[p]! + 1 : 0;
      c = classOf(gap, quick);
      // What the next request did not re-read of p will not be read again.
      if (this.t.gState[p] === ALIVE) this.t.unlistAlive(p);
      this.t.gState[p] = GONE;
      if (this.t.gCount[p]! > 0) this.t.list(p, DEAD);
      else this.maybeFree(p);
    }
    if (this.o.shared) this.split(g, p);
    const cand = this.cand;
    this.cand = 0;
    if (cand !== 0 && this.t.gSerial[cand] === this.candSerial) this.maybeFree(cand);
    if (this.curHint === 'soon') c = this.o.soonClasses ? SOON_BASE + c : SOON;
    this.t.gClass[g] = c;
    this.t.gQuick[g] = quick;
    if (this.curHint === 'closed') {
      // The engine says the conversation is over: nothing of it will be read again.
      this.t.gState[g] = GONE;
      if (this.t.gCount[g]! > 0) this.t.list(g, DEAD);
      return;
    }
    this.t.gState[g] = ALIVE;
    this.t.listAlive(g, c);
    if (this.t.gCount[g]! > 0) this.t.list(g, c);
  }

  /** A block of group g (or its ghost) was read by the current request. */
  private saw(g: number): void {
    if (g === this.cur || g < LISTS) return;
    if (this.t.gClass[g] === SHARED && this.t.gState[g] === ALIVE) return;
    const s = this.t.gSession[g]!;
    if (this.curSession >= 0 && s >= 0 && s !== this.curSession) return;
    if (g === this.cand && this.t.gSerial[g] === this.candSerial) this.candCount++;
    else {
      const old = this.cand;
      this.cand = g;
      if (old !== 0) this.maybeFree(old);
      this.candSerial = this.t.gSerial[g]!;
      this.candCount = 1;
    }
  }

  // ---- groups ----

  /**
   * Moves the blocks group g read from groups other than its predecessor p into a shared group
   * of their own; a shared group they came from has come back (once per request).
   */
  private split(g: number, p: number): void {
    let s = 0;
    for (let n = this.t.gHead[g]!; n !== 0;) {
      const next = this.t.bNext[n]!;
      const h = this.fromG[n]!;
      if (h !== 0 && h !== p) {
        if (
          this.t.gClass[h] === SHARED &&
          this.t.gState[h] === ALIVE &&
          this.t.gTime[h]! < this.now
        ) {
          this.model.returned(SHARED, this.now - this.t.gTime[h]!);
          this.t.gTime[h] = this.now;
          if (this.t.gCount[h]! > 0) this.t.list(h, SHARED);
        }
        if (s === 0) {
          s = this.t.create(this.now);
          this.t.gState[s] = ALIVE;
          this.t.gClass[s] = SHARED;
          this.t.listAlive(s, SHARED);
        }
        this.leave(n);
        this.join(n, s);
      }
      this.fromG[n] = 0;
      n = next;
    }
  }

  /** Frees group g once nothing refers to it; a lineage that never came back is censored. */
  private maybeFree(g: number): void {
    // The current request's candidate predecessor is kept until its lineage is decided.
    if (g === this.cur || this.t.gState[g] === FREE || (g === this.cand && !this.decided)) return;
    if (this.t.gCount[g]! > 0 || this.t.gGhosts[g]! > 0) return;
    if (this.t.gState[g] === ALIVE) {
      this.t.unlistAlive(g);
      this.model.censored(this.t.gClass[g]!, this.now - this.t.gTime[g]!);
    }
    this.t.release(g);
  }

  /** Appends node n (in no group) as the deepest block of group g. */
  private join(n: number, g: number): void {
    this.t.join(n, g);
    this.l.aux[n] = g;
  }

  /** Takes node n out of its group (it stays in its key list). */
  private leave(n: number): void {
    const g = this.l.aux[n]!;
    if (g === 0) return;
    this.l.aux[n] = 0;
    if (this.t.unchain(n, g) === 0) {
      this.t.unlist(g);
      this.maybeFree(g);
    }
  }

  // ---- keys ----

  private growNodes(n: number): void {
    if (n < this.fromG.length) return;
    this.t.growNodes(n);
    this.links.growNodes(n);
    let size = this.fromG.length * 2;
    while (size <= n) size *= 2;
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
      this.links.link(n, at);
    } else if (info.depth === 0) {
      this.links.link(n, 0);
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
      this.links.clear(n);
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
      if (this.t.gSerial[g] === l.tag[n]) this.saw(g);
    }
    this.lastNode = 0;
    this.lastDepth = info.depth;
  }

  private forgetGhost(n: number): void {
    const l = this.l;
    const g = l.aux[n]!;
    l.free(n);
    if (this.t.gSerial[g] === l.tag[n]) {
      this.t.gGhosts[g]!--;
      this.maybeFree(g);
    }
  }

  remove(key: K): void {
    const l = this.l;
    const v = this.victimNode;
    // BlockIndex removes the key victim() just chose: skip a scattered read of the key index.
    const n = v !== 0 && l.keys[v] === key ? v : l.find(key);
    this.victimNode = 0;
    if (n === 0 || l.list[n] === GHOST) return;
    // Its child can no longer be reached by a prefix lookup.
    const c = this.links.cut(n);
    if (c !== 0 && l.list[c] === LIVE && l.keys[c] !== undefined) {
      this.leave(c);
      l.moveToTail(c, ORPHAN);
    }
    const g = l.aux[n]!;
    const keep = l.list[n] === LIVE && g !== 0 && this.t.gState[g] !== GONE;
    // Counted as a ghost first, so that its group outlives the last resident block.
    if (keep) this.t.gGhosts[g]!++;
    this.leave(n);
    if (!keep) {
      l.free(n);
      return;
    }
    // Remember which group the key was in, to see its conversation come back.
    l.moveToTail(n, GHOST);
    l.aux[n] = g;
    l.tag[n] = this.t.gSerial[g]!;
    if (l.sizes[GHOST]! > this.ghostLimit) this.forgetGhost(l.head(GHOST));
  }

  victim(evictable?: (key: K) => boolean): K | undefined {
    const l = this.l;
    if (l.sizes[ORPHAN]! > 0) {
      const o = l.first(ORPHAN, evictable);
      if (o !== 0) {
        this.victimNode = o;
        return l.keys[o];
      }
    }
    // The current request's lineage is decided before anything is evicted for it.
    if (this.cur !== 0 && !this.decided) this.decide();
    for (let g = this.t.gNext[DEAD]!; g !== DEAD; g = this.t.gNext[g]!) {
      const n = this.t.deepest(g, l.keys, evictable);
      if (n !== 0) {
        this.victimNode = n;
        return l.keys[n];
      }
    }
    const fresh = this.now === this.valueNow && this.model.version === this.valueVersion;
    this.valueNow = this.now;
    this.valueVersion = this.model.version;
    const best = this.o.exact
      ? this.t.lowest(this.model.index, this.now, fresh)
      : this.t.lowestHead(this.model.index, this.now, fresh);
    if (best !== 0) {
      const n = this.t.deepest(best, l.keys, evictable);
      if (n !== 0) {
        this.victimNode = n;
        return l.keys[n];
      }
    }
    // Pinned or busy blocks in the way: the first evictable block of any group, oldest first.
    const n = l.first(LIVE, evictable);
    this.victimNode = n;
    return n === 0 ? undefined : l.keys[n];
  }

  admit(_key: K, _info: AccessInfo, victim: K): boolean {
    if (!this.o.bypass || this.cur === 0) return true;
    const l = this.l;
    const v0 = this.victimNode;
    const n = v0 !== 0 && l.keys[v0] === victim ? v0 : l.find(victim);
    if (n === 0 || l.list[n] !== LIVE) return true;
    const v = l.aux[n]!;
    if (v === 0 || v === this.cur || this.t.gState[v] !== ALIVE) return true;
    if (!this.decided) this.decide();
    return worthAtLeast(this.t, this.model, this.cur, v, this.now, this.o.bypassKnown);
  }

  // ---- predictive prefetch (forecast, worth, victimWorth, stage) ----

  /** Remembered keys of the groups worth most at `now`, best first (see forecastKeys). */
  forecast(now: number, maxKeys: number, scan = 4 * maxKeys + 1024): K[] {
    // Between requests (the Warehouse's staging timer) time passes: victim() and admit() value
    // groups at this.now, which only requests moved, so it must see the forecast's clock too.
    if (now > this.now) this.now = now;
    return forecastKeys(this.l, this.t, this.model, now, maxKeys, scan);
  }

  worth(key: K, now: number): number {
    return keyWorth(this.l, this.t, this.model, key, now);
  }

  victimWorth(now: number): number {
    // As in victim(): the current request's lineage is decided before its value is compared.
    if (this.cur !== 0 && !this.decided) this.decide();
    return victimWorthOf(this.l, this.t, this.model, now);
  }

  stage(key: K, _now: number): boolean {
    const l = this.l;
    const n = l.find(key);
    if (n === 0 || l.list[n] !== GHOST) return false;
    const g = l.aux[n]!;
    if (this.t.gSerial[g] !== l.tag[n] || this.t.gState[g] !== ALIVE) return false;
    this.t.gGhosts[g]!--;
    l.moveToTail(n, LIVE);
    l.aux[n] = 0;
    // Staged root first: the group's deepest resident block is this one's parent.
    this.links.clear(n);
    this.links.link(n, this.t.gTail[g]!);
    const listed = this.t.gList[g] !== UNLISTED;
    this.join(n, g);
    if (!listed) {
      // An old group: at the oldest end of its class, where victim() looks (not the newest end).
      this.t.listOldest(g, this.t.gClass[g]!);
    }
    return true;
  }
}
