import { KeyLists } from './list.js';
import type { AccessInfo, EvictionPolicy } from './policy.js';

/** Uses-so-far classes: 1, 2, 3-4, 5-8, 9-16, 17+. */
const CLASSES = 6;
const ORPHANS = CLASSES;
const GHOSTS = CLASSES + 1;
/** Age bins: one per access below 16, then four per doubling. */
const LINEAR = 16;
const BINS = LINEAR + 4 * 26;
/** Counted events (hits and evictions) between two recomputations of the density table. */
const PERIOD = 1 << 15;
const DECAY = 0.9;

function classOf(uses: number): number {
  return uses <= 1 ? 0 : Math.min(CLASSES - 1, 32 - Math.clz32(uses - 1));
}

function binOf(age: number): number {
  if (age < LINEAR) return age < 0 ? 0 : Math.floor(age);
  return Math.min(BINS - 1, LINEAR + Math.floor(4 * Math.log2(age / LINEAR)));
}

function binWidth(b: number): number {
  if (b < LINEAR) return 1;
  return LINEAR * 2 ** ((b - LINEAR) / 4) * (2 ** 0.25 - 1);
}

export interface DensityOptions {
  /** Among the blocks of one request, evict the deepest first (default true). */
  leafFirst?: boolean;
  /** When a block is evicted, its child in the request that placed both goes next (default true). */
  orphans?: boolean;
  /** Random resident blocks considered per eviction, besides each class's oldest. */
  samples?: number;
}

/**
 * Hit density by age and class, learned online (after LHD, Beckmann et al., NSDI '18), on a
 * prefix tree. Blocks are classed by how often they were used; within a class they queue in
 * recency order (deepest block of a request first). To evict, the oldest block of each class is a
 * candidate, and the one with the least expected hits per unit of cache time at its age goes:
 * density(class, age) = hits after that age / (cache time spent by blocks past that age), from
 * histograms of the ages at which blocks of the class were hit or evicted, decayed as the workload
 * moves. A block whose parent was evicted is worth nothing to a prefix lookup: it goes first.
 *
 * Ages count accesses (hits and misses), not wall time, so no unit needs tuning.
 */
export class DensityPolicy<K> implements EvictionPolicy<K> {
  readonly name: string;
  private readonly l = new KeyLists<K>(CLASSES + 2);
  private readonly leafFirst: boolean;
  private readonly orphans: boolean;
  private readonly samples: number;
  private clock = 0;
  private events = 0;
  private readonly hits = new Float64Array(CLASSES * BINS);
  private readonly evictions = new Float64Array(CLASSES * BINS);
  private readonly density = new Float64Array(CLASSES * BINS);
  /** Per node: last access (clock), uses, parent node; the child node is in KeyLists.aux. */
  private last: Float64Array = new Float64Array(16);
  private uses: Int32Array = new Int32Array(16);
  private parent: Int32Array = new Int32Array(16);
  /** The request of each node's last counted access: (now, depth). */
  private lastNow: Float64Array = new Float64Array(16);
  private prevNow = NaN;
  private prevChain = -1;
  private prevDepth = -1;
  private prevNode = 0;

  constructor(
    private readonly capacity: number,
    options: DensityOptions = {},
    name = 'density',
  ) {
    this.leafFirst = options.leafFirst ?? true;
    this.samples = options.samples ?? 0;
    this.orphans = options.orphans ?? true;
    this.name = name;
  }

  get size(): number {
    let n = this.l.sizes[ORPHANS]!;
    for (let c = 0; c < CLASSES; c++) n += this.l.sizes[c]!;
    return n;
  }

  private ensure(n: number): void {
    if (n < this.last.length) return;
    const size = Math.max(n + 1, this.last.length * 2);
    const f = (a: Float64Array): Float64Array => {
      const b = new Float64Array(size);
      b.set(a);
      return b;
    };
    const i = (a: Int32Array): Int32Array => {
      const b = new Int32Array(size);
      b.set(a);
      return b;
    };
    this.last = f(this.last);
    this.lastNow = f(this.lastNow);
    this.uses = i(this.uses);
    this.parent = i(this.parent);
  }

  /** Queues node n at the young end of class list `to`, before its parent from this request. */
  private place(n: number, to: number, info: AccessInfo): void {
    const l = this.l;
    const at = this.prevNode;
    const chained =
      info.now === this.prevNow &&
      info.chainLength === this.prevChain &&
      info.depth === this.prevDepth + 1 &&
      at > GHOSTS &&
      l.keys[at] !== undefined;
    if (this.orphans) {
      if (chained) {
        l.aux[at] = n;
        this.parent[n] = at;
      } else {
        this.parent[n] = 0;
      }
    }
    if (this.leafFirst && chained && l.list[at] === to) l.moveBefore(n, at);
    else l.moveToTail(n, to);
    this.prevNode = n;
    this.prevNow = info.now;
    this.prevChain = info.chainLength;
    this.prevDepth = info.depth;
  }

  private record(table: Float64Array, n: number): void {
    const c = classOf(this.uses[n]!);
    table[c * BINS + binOf(this.clock - this.last[n]!)]! += 1;
    if (++this.events >= PERIOD) this.recompute();
  }

  private recompute(): void {
    this.events = 0;
    const { hits, evictions, density } = this;
    for (let c = 0; c < CLASSES; c++) {
      let hitsUp = 0;
      let eventsUp = 0;
      let life = 0;
      for (let b = BINS - 1; b >= 0; b--) {
        const i = c * BINS + b;
        hitsUp += hits[i]!;
        eventsUp += hits[i]! + evictions[i]!;
        life += eventsUp * binWidth(b);
        density[i] = life > 0 ? hitsUp / life : 0;
        hits[i]! *= DECAY;
        evictions[i]! *= DECAY;
      }
    }
  }

  insert(key: K, info: AccessInfo): void {
    const l = this.l;
    let n = l.find(key);
    if (n !== 0 && l.list[n] !== GHOSTS) {
      this.touch(key, info);
      return;
    }
    if (n === 0) {
      n = l.add(key, CLASSES - 1);
      this.ensure(n);
      this.uses[n] = 1;
    } else {
      this.uses[n]!++; // seen again after it was evicted
    }
    this.last[n] = this.clock;
    this.lastNow[n] = info.now;
    this.place(n, classOf(this.uses[n]!), info);
  }

  touch(key: K, info: AccessInfo): void {
    const l = this.l;
    const n = l.find(key);
    if (n === 0 || l.list[n] === GHOSTS) return;
    if (this.lastNow[n] !== info.now) {
      // A new request: a hit at this age.
      this.clock++;
      this.record(this.hits, n);
      this.uses[n]!++;
      this.last[n] = this.clock;
      this.lastNow[n] = info.now;
    }
    this.place(n, classOf(this.uses[n]!), info);
  }

  miss(_key: K, _info: AccessInfo): void {
    this.clock++;
  }

  /** A block left: its child, if resident and still its child, becomes an orphan. */
  private orphan(n: number): void {
    const l = this.l;
    const c = l.aux[n]!;
    l.aux[n] = 0;
    if (c > GHOSTS && this.parent[c] === n && l.keys[c] !== undefined && l.list[c]! < CLASSES) {
      l.moveToTail(c, ORPHANS);
    }
  }

  remove(key: K): void {
    const l = this.l;
    const n = l.find(key);
    if (n === 0 || l.list[n] === GHOSTS) return;
    this.record(this.evictions, n);
    if (this.orphans) this.orphan(n);
    l.moveToTail(n, GHOSTS);
    if (l.sizes[GHOSTS]! > this.capacity) l.free(l.head(GHOSTS));
  }

  /** xorshift32 state, for sampling. */
  private seed = 0x9e3779b9;

  private random(): number {
    let x = this.seed;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.seed = x;
    return (x >>> 0) / 4294967296;
  }

  victim(evictable?: (key: K) => boolean): K | undefined {
    const l = this.l;
    if (l.sizes[ORPHANS]! > 0) {
      const o = l.first(ORPHANS, evictable);
      if (o !== 0) return l.keys[o];
    }
    let best = 0;
    let bestDensity = Infinity;
    let bestAge = -1;
    const span = this.last.length;
    for (let i = 0; i < this.samples; i++) {
      const n = GHOSTS + 1 + Math.floor(this.random() * (span - GHOSTS - 1));
      const c = l.list[n]!;
      if (c >= CLASSES || l.keys[n] === undefined) continue;
      if (evictable && !evictable(l.keys[n])) continue;
      const age = this.clock - this.last[n]!;
      const d = this.density[c * BINS + binOf(age)]!;
      if (d < bestDensity || (d === bestDensity && age > bestAge)) {
        best = n;
        bestDensity = d;
        bestAge = age;
      }
    }
    for (let c = 0; c < CLASSES; c++) {
      if (l.sizes[c] === 0) continue;
      const n = l.first(c, evictable);
      if (n === 0) continue;
      const age = this.clock - this.last[n]!;
      const d = this.density[c * BINS + binOf(age)]!;
      if (d < bestDensity || (d === bestDensity && age > bestAge)) {
        best = n;
        bestDensity = d;
        bestAge = age;
      }
    }
    return best === 0 ? undefined : l.keys[best];
  }
}
