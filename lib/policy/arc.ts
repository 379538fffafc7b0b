import { KeyLists } from './list.js';
import type { AccessInfo, EvictionPolicy } from './policy.js';

/** ARC's lists: seen once, seen again, and the ghosts of each. */
const T1 = 0;
const T2 = 1;
const B1 = 2;
const B2 = 3;
/** Resident blocks whose parent (the block before them in a request) was evicted. */
const ORPHANS = 4;
/** Seen again in many requests (the `frequent` option): the protected part of T2. */
const T3 = 5;
/** Nodes below this are the lists' sentinels. */
const FIRST_NODE = 6;

export interface ArcOptions {
  /** Among the blocks of one request, evict the deepest first. */
  leafFirst?: boolean;
  /**
   * Orphan cascade: when a block is evicted, its child (the block after it in the last request
   * that placed both) is evicted next, and so on down the chain. An orphan leaves no ghost.
   */
  orphans?: boolean;
  /** Each ghost list remembers up to this many times the capacity (default 1, as in ARC). */
  ghosts?: number;
  /**
   * A block used by at least this many requests moves to T3, a protected part of T2 (at most
   * half of T2 + T3; its overflow goes back to T2's young end). 0: off.
   */
  frequent?: number;
}

/**
 * ARC (Megiddo & Modha, FAST '03) adapted to the EvictionPolicy interface: keys seen once (T1) and
 * seen again (T2), ghosts of both (B1, B2) that remember recently evicted keys, and a target size
 * p for T1 that moves towards whichever ghost list is being hit. No tuning knobs.
 *
 * On a prefix tree three more rules (off by default; `arc-tree` turns on the first two):
 * - `leafFirst`: among keys touched by the same request, the deeper one is evicted first;
 * - `orphans`: a block whose parent was evicted cannot serve a prefix lookup until the parent is
 *   back (and then the request that brings the parent back re-inserts the child too), so it is
 *   worth nothing: it is evicted before anything else.
 *
 * - `frequent`: blocks used by many requests (shared system prompts, long-lived contexts) are
 *   kept in a protected half of T2, so a burst of blocks seen twice cannot flush them. Not in the
 *   default: its threshold is sensitive (docs/policies.md).
 *
 * The lists share one node pool and one key index: an access is one lookup.
 */
export class ArcPolicy<K> implements EvictionPolicy<K> {
  readonly name: string;
  private readonly l = new KeyLists<K>(6);
  private readonly frequent: number;
  /** Per node: requests that used the block, and the time of the last one. */
  private uses: Int32Array = new Int32Array(16);
  private usedAt: Float64Array = new Float64Array(16);
  private readonly leafFirst: boolean;
  private readonly orphans: boolean;
  private readonly ghostLimit: number;
  /** Per node: its parent's node (KeyLists.aux holds the child's). */
  private parent: Int32Array = new Int32Array(16);
  private p = 0;
  private lastNow = NaN;
  private lastChain = -1;
  private lastDepth = -1;
  private lastList = -1;
  private lastNode = 0;

  constructor(
    private readonly capacity: number,
    options: ArcOptions | boolean = {},
    name?: string,
  ) {
    const o = typeof options === 'boolean' ? { leafFirst: options } : options;
    this.leafFirst = o.leafFirst ?? false;
    this.orphans = o.orphans ?? false;
    this.ghostLimit = Math.max(1, Math.round((o.ghosts ?? 1) * capacity));
    this.frequent = o.frequent ?? 0;
    this.name = name ?? (this.orphans ? 'arc-tree' : this.leafFirst ? 'arc-leaf' : 'arc');
  }

  get size(): number {
    const s = this.l.sizes;
    return s[T1]! + s[T2]! + s[T3]! + s[ORPHANS]!;
  }

  /** Puts node n at the MRU end of list `to` (before the previous block of the same request). */
  private place(n: number, to: number, info: AccessInfo): void {
    const l = this.l;
    const at = this.lastNode;
    if (this.frequent > 0) to = this.count(n, to, info);
    const chained =
      info.now === this.lastNow &&
      info.chainLength === this.lastChain &&
      info.depth === this.lastDepth + 1 &&
      at >= FIRST_NODE &&
      l.keys[at] !== undefined;
    if (this.orphans) {
      if (n >= this.parent.length) {
        const p = new Int32Array(Math.max(n + 1, this.parent.length * 2));
        p.set(this.parent);
        this.parent = p;
      }
      if (chained) {
        l.aux[at] = n;
        this.parent[n] = at;
      } else {
        this.parent[n] = 0;
      }
    }
    if (this.leafFirst && chained && this.lastList === to && l.list[at] === to) {
      l.moveBefore(n, at);
    } else {
      l.moveToTail(n, to);
    }
    this.lastNode = n;
    this.lastList = to;
    this.lastNow = info.now;
    this.lastChain = info.chainLength;
    this.lastDepth = info.depth;
    if (to === T3) {
      const t3 = l.sizes[T3]!;
      if (t3 > 1 && 2 * t3 > t3 + l.sizes[T2]!) {
        const h = l.head(T3);
        if (h !== n) l.moveToTail(h, T2);
      }
    }
  }

  /** Counts a use of node n (once per request); returns the list it belongs in. */
  private count(n: number, to: number, info: AccessInfo): number {
    if (n >= this.uses.length) {
      const u = new Int32Array(Math.max(n + 1, this.uses.length * 2));
      u.set(this.uses);
      this.uses = u;
      const w = new Float64Array(u.length);
      w.set(this.usedAt);
      this.usedAt = w;
    }
    if (to === T1) {
      this.uses[n] = 1;
      this.usedAt[n] = info.now;
    } else if (this.usedAt[n] !== info.now) {
      this.uses[n]!++;
      this.usedAt[n] = info.now;
    }
    return to === T2 && this.uses[n]! >= this.frequent ? T3 : to;
  }

  insert(key: K, info: AccessInfo): void {
    const l = this.l;
    const n = l.find(key);
    if (n === 0) this.place(l.add(key, T1), T1, info);
    else this.place(n, T2, info); // resident (a touch) or a ghost: seen again
  }

  touch(key: K, info: AccessInfo): void {
    const l = this.l;
    const n = l.find(key);
    if (n === 0) return;
    const where = l.list[n]!;
    if (where <= T2 || where >= ORPHANS) this.place(n, T2, info);
  }

  miss(key: K, _info: AccessInfo): void {
    const l = this.l;
    const n = l.find(key);
    if (n === 0) return;
    const b1 = l.sizes[B1]!;
    const b2 = l.sizes[B2]!;
    const where = l.list[n];
    if (where === B1) this.p = Math.min(this.capacity, this.p + Math.max(b2 / b1, 1));
    else if (where === B2) this.p = Math.max(0, this.p - Math.max(b1 / b2, 1));
  }

  /** Block n leaves: its child, if resident and still its child, becomes an orphan. */
  private orphan(n: number): void {
    const l = this.l;
    const c = l.aux[n]!;
    l.aux[n] = 0;
    if (
      c >= FIRST_NODE &&
      this.parent[c] === n &&
      l.keys[c] !== undefined &&
      (l.list[c]! <= T2 || l.list[c] === T3)
    ) {
      l.moveToTail(c, ORPHANS);
    }
  }

  remove(key: K): void {
    const l = this.l;
    const n = l.find(key);
    if (n === 0) return;
    const where = l.list[n]!;
    if (where === B1 || where === B2) return;
    if (this.orphans) this.orphan(n);
    if (where === ORPHANS) {
      l.free(n);
      return;
    }
    const ghost = where === T1 ? B1 : B2; // T3's go to B2
    l.moveToTail(n, ghost);
    if (l.sizes[ghost]! > this.ghostLimit) l.free(l.head(ghost));
  }

  forget(key: K): void {
    const l = this.l;
    const n = l.find(key);
    if (n === 0) return;
    const where = l.list[n]!;
    if (this.orphans && where !== B1 && where !== B2 && where !== ORPHANS) this.orphan(n);
    l.free(n);
  }

  victim(evictable?: (key: K) => boolean): K | undefined {
    const l = this.l;
    if (l.sizes[ORPHANS]! > 0) {
      const o = l.first(ORPHANS, evictable);
      if (o !== 0) return l.keys[o];
    }
    const t1 = l.sizes[T1]!;
    const fromT1 = t1 > 0 && t1 >= Math.max(1, this.p);
    let n = l.first(fromT1 ? T1 : T2, evictable);
    if (n === 0) n = l.first(fromT1 ? T2 : T1, evictable);
    if (n === 0) n = l.first(T3, evictable);
    return n === 0 ? undefined : l.keys[n];
  }
}
