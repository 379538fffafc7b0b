/**
 * An intrusive doubly linked list of keys over typed arrays: O(1) insert, move and remove with one
 * Map lookup, no per-key objects, and iteration that never walks over deleted entries (a Map's
 * insertion order does: after many deletions at its front, finding the oldest key gets slow).
 */
/** Integer keys below this are indexed by a flat array (the simulator's keys); others by a Map. */
const DENSE_LIMIT = 1 << 26;

/** Node lookup: a flat Int32Array for small non-negative integer keys, a Map for the rest. */
class NodeIndex<K> {
  private readonly map = new Map<K, number>();
  private dense = new Int32Array(0);
  private count = 0;

  get size(): number {
    return this.count;
  }

  get(key: K): number | undefined {
    if (typeof key === 'number' && key >= 0 && key < DENSE_LIMIT && (key | 0) === key) {
      const n = key < this.dense.length ? this.dense[key]! : 0;
      return n === 0 ? undefined : n;
    }
    return this.map.get(key);
  }

  has(key: K): boolean {
    return this.get(key) !== undefined;
  }

  set(key: K, n: number): void {
    if (typeof key === 'number' && key >= 0 && key < DENSE_LIMIT && (key | 0) === key) {
      if (key >= this.dense.length) {
        let size = Math.max(1024, this.dense.length * 2);
        while (size <= key) size *= 2;
        const d = new Int32Array(Math.min(size, DENSE_LIMIT));
        d.set(this.dense);
        this.dense = d;
      }
      if (this.dense[key] === 0) this.count++;
      this.dense[key] = n;
      return;
    }
    if (!this.map.has(key)) this.count++;
    this.map.set(key, n);
  }

  /**
   * Forgets a key whose node is being freed, for an owner that checks the node's key on every
   * lookup (KeyLists.find): a small integer key's slot is left as it is (the node's key no
   * longer matches), which saves a scattered write; a Map key is deleted. `size` is then wrong.
   */
  release(key: K): void {
    if (typeof key === 'number' && key >= 0 && key < DENSE_LIMIT && (key | 0) === key) return;
    this.map.delete(key);
  }

  delete(key: K): boolean {
    if (typeof key === 'number' && key >= 0 && key < DENSE_LIMIT && (key | 0) === key) {
      if (key >= this.dense.length || this.dense[key] === 0) return false;
      this.dense[key] = 0;
      this.count--;
      return true;
    }
    if (!this.map.delete(key)) return false;
    this.count--;
    return true;
  }
}

export class KeyList<K> {
  /** Node of each key (node 0 is the sentinel, so 0 never names a key). */
  readonly node = new NodeIndex<K>();
  keys: (K | undefined)[] = [];
  prev = new Int32Array(16);
  next = new Int32Array(16);
  /** Per-node number a policy may use (a timestamp, a class, a counter). */
  tag = new Float64Array(16);
  private freeNodes: number[] = [];
  private used = 0;
  /** Sentinel: next[0] is the head (oldest), prev[0] the tail (newest). */
  constructor() {
    this.used = 1;
    this.keys.push(undefined);
    this.prev[0] = 0;
    this.next[0] = 0;
  }

  get size(): number {
    return this.node.size;
  }

  get head(): number {
    return this.next[0]!;
  }

  get tail(): number {
    return this.prev[0]!;
  }

  private alloc(): number {
    const f = this.freeNodes.pop();
    if (f !== undefined) return f;
    const n = this.used++;
    if (n >= this.prev.length) {
      const size = this.prev.length * 2;
      const grow = <T extends Int32Array | Float64Array>(a: T, b: T): T => {
        b.set(a);
        return b;
      };
      this.prev = grow(this.prev, new Int32Array(size));
      this.next = grow(this.next, new Int32Array(size));
      this.tag = grow(this.tag, new Float64Array(size));
    }
    return n;
  }

  /** Links node n before node `at` (0: at the tail). */
  private link(n: number, at: number): void {
    const p = this.prev[at]!;
    this.prev[n] = p;
    this.next[n] = at;
    this.next[p] = n;
    this.prev[at] = n;
  }

  private unlink(n: number): void {
    const p = this.prev[n]!;
    const q = this.next[n]!;
    this.next[p] = q;
    this.prev[q] = p;
  }

  /** Adds the key at the tail (newest) and returns its node; moves it there if present. */
  push(key: K): number {
    let n = this.node.get(key);
    if (n !== undefined) {
      this.unlink(n);
    } else {
      n = this.alloc();
      this.node.set(key, n);
      this.keys[n] = key;
    }
    this.link(n, 0);
    return n;
  }

  /** Adds the key at the head (oldest end), or moves it there. */
  unshift(key: K): number {
    let n = this.node.get(key);
    if (n !== undefined) {
      this.unlink(n);
    } else {
      n = this.alloc();
      this.node.set(key, n);
      this.keys[n] = key;
    }
    this.link(n, this.next[0]!);
    return n;
  }

  /** Adds the key (or moves it) just before node `at` (0: at the tail). */
  pushBefore(key: K, at: number): number {
    let n = this.node.get(key);
    if (n !== undefined) {
      if (n === at) return n;
      this.unlink(n);
    } else {
      n = this.alloc();
      this.node.set(key, n);
      this.keys[n] = key;
    }
    this.link(n, at);
    return n;
  }

  /** Removes and returns the oldest key. */
  shift(): K | undefined {
    const n = this.next[0]!;
    if (n === 0) return undefined;
    const k = this.keys[n] as K;
    this.delete(k);
    return k;
  }

  /** Moves node n to the tail. */
  moveToTail(n: number): void {
    this.unlink(n);
    this.link(n, 0);
  }

  delete(key: K): boolean {
    const n = this.node.get(key);
    if (n === undefined) return false;
    this.node.delete(key);
    this.unlink(n);
    this.keys[n] = undefined;
    this.freeNodes.push(n);
    return true;
  }

  /** The oldest key for which `ok` holds. */
  first(ok?: (key: K) => boolean): K | undefined {
    for (let n = this.next[0]!; n !== 0; n = this.next[n]!) {
      const k = this.keys[n] as K;
      if (!ok || ok(k)) return k;
    }
    return undefined;
  }
}

/**
 * Several intrusive lists over one node pool and one key index: a key is in at most one of them,
 * and finding it (and which list holds it) is a single lookup. For policies with several queues
 * (ARC's T1, T2 and ghosts): a hit moves a node between lists without a second lookup.
 */
export class KeyLists<K> {
  readonly node = new NodeIndex<K>();
  keys: (K | undefined)[] = [];
  prev: Int32Array;
  next: Int32Array;
  /** Which list each node is in. */
  list: Uint8Array;
  /** Per-node number a policy may use (a timestamp, a class, a counter). */
  tag: Float64Array;
  /** Per-node integer a policy may use. */
  aux: Int32Array;
  /** Keys in each list. */
  readonly sizes: Int32Array;
  private freeNodes: number[] = [];
  private used: number;

  /** Nodes 0 .. lists-1 are the sentinels: next[l] is list l's head (oldest), prev[l] its tail. */
  constructor(readonly lists: number) {
    const size = 16 + lists;
    this.prev = new Int32Array(size);
    this.next = new Int32Array(size);
    this.list = new Uint8Array(size);
    this.tag = new Float64Array(size);
    this.aux = new Int32Array(size);
    this.sizes = new Int32Array(lists);
    for (let l = 0; l < lists; l++) {
      this.keys.push(undefined);
      this.prev[l] = l;
      this.next[l] = l;
      this.list[l] = l;
    }
    this.used = lists;
  }

  /** The key's node, or 0 (never a key's node... node 0 is a sentinel). */
  find(key: K): number {
    const n = this.node.get(key);
    // free() leaves small integer keys in the index: a freed or reused node names another key.
    // (key !== key: NaN, only ever in the Map, which free() does clear.)
    return n !== undefined && (this.keys[n] === key || key !== key) ? n : 0;
  }

  head(l: number): number {
    const n = this.next[l]!;
    return n === l ? 0 : n;
  }

  private alloc(): number {
    const f = this.freeNodes.pop();
    if (f !== undefined) return f;
    const n = this.used++;
    if (n >= this.prev.length) {
      const size = this.prev.length * 2;
      const grow = <T extends Int32Array | Float64Array | Uint8Array>(a: T, b: T): T => {
        b.set(a);
        return b;
      };
      this.prev = grow(this.prev, new Int32Array(size));
      this.next = grow(this.next, new Int32Array(size));
      this.list = grow(this.list, new Uint8Array(size));
      this.tag = grow(this.tag, new Float64Array(size));
      this.aux = grow(this.aux, new Int32Array(size));
    }
    return n;
  }

  /** Links node n before node `at` (a sentinel l: at list l's tail), in list l. */
  private link(n: number, at: number, l: number): void {
    const p = this.prev[at]!;
    this.prev[n] = p;
    this.next[n] = at;
    this.next[p] = n;
    this.prev[at] = n;
    this.list[n] = l;
    this.sizes[l]!++;
  }

  private unlink(n: number): void {
    const p = this.prev[n]!;
    const q = this.next[n]!;
    this.next[p] = q;
    this.prev[q] = p;
    this.sizes[this.list[n]!]!--;
  }

  /** Adds a new key at the tail of list l; returns its node. The key must not be present. */
  add(key: K, l: number): number {
    const n = this.alloc();
    this.node.set(key, n);
    this.keys[n] = key;
    this.link(n, l, l);
    return n;
  }

  /** Moves node n to the tail of list l. */
  moveToTail(n: number, l: number): void {
    this.unlink(n);
    this.link(n, l, l);
  }

  /** Moves node n just before node `at` (in at's list). */
  moveBefore(n: number, at: number): void {
    if (n === at) return;
    this.unlink(n);
    this.link(n, at, this.list[at]!);
  }

  /** Moves node n to the head (oldest end) of list l. */
  moveToHead(n: number, l: number): void {
    this.unlink(n);
    this.link(n, this.next[l]!, l);
  }

  /** Removes node n and forgets its key. */
  free(n: number): void {
    this.node.release(this.keys[n] as K);
    this.unlink(n);
    this.keys[n] = undefined;
    this.freeNodes.push(n);
  }

  /** The oldest node of list l whose key passes `ok` (0: none). */
  first(l: number, ok?: (key: K) => boolean): number {
    for (let n = this.next[l]!; n !== l; n = this.next[n]!) {
      if (!ok || ok(this.keys[n] as K)) return n;
    }
    return 0;
  }
}
