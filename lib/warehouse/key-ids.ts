/**
 * Maps keys to small integer ids (the index's rows). The Warehouse's keys are strings: a Map. The
 * simulator's are small non-negative integers: the key is its own id, with no hashing at all.
 */
export interface KeyIds<K> {
  readonly size: number;
  /** The key's id, or -1. */
  get(key: K): number;
  /** A new id for a key that has none. */
  add(key: K): number;
  delete(key: K, id: number): void;
  key(id: number): K;
  /** Every id in use. */
  ids(): IterableIterator<number>;
}

/** Ids from a Map, for any key type (the default). */
export class MapKeyIds<K> implements KeyIds<K> {
  private readonly map = new Map<K, number>();
  private readonly keys: K[] = [];
  private readonly spare: number[] = [];

  get size(): number {
    return this.map.size;
  }

  get(key: K): number {
    return this.map.get(key) ?? -1;
  }

  add(key: K): number {
    const id = this.spare.pop() ?? this.keys.length;
    this.keys[id] = key;
    this.map.set(key, id);
    return id;
  }

  delete(key: K, id: number): void {
    this.map.delete(key);
    this.spare.push(id);
  }

  key(id: number): K {
    return this.keys[id]!;
  }

  ids(): IterableIterator<number> {
    return this.map.values();
  }
}

/** Keys at or above this cannot be their own ids. */
export const DENSE_KEY_LIMIT = 1 << 28;

/**
 * Non-negative integer keys that are their own ids (the simulator's: readers move ids into a
 * compact range). Keys must be below DENSE_KEY_LIMIT; size the space to the largest key + 1.
 */
export class DenseKeyIds implements KeyIds<number> {
  private present: Uint8Array;
  private count = 0;

  constructor(space = 1024) {
    this.present = new Uint8Array(Math.max(1, space));
  }

  get size(): number {
    return this.count;
  }

  get(key: number): number {
    return this.present[key] === 1 ? key : -1;
  }

  add(key: number): number {
    if (!(key >= 0 && key < DENSE_KEY_LIMIT && Math.floor(key) === key)) {
      throw new RangeError(`key ${key} cannot index a dense table`);
    }
    if (key >= this.present.length) {
      let size = this.present.length * 2;
      while (size <= key) size *= 2;
      const p = new Uint8Array(Math.min(size, DENSE_KEY_LIMIT));
      p.set(this.present);
      this.present = p;
    }
    this.present[key] = 1;
    this.count++;
    return key;
  }

  delete(key: number, _id: number): void {
    if (this.present[key] === 1) {
      this.present[key] = 0;
      this.count--;
    }
  }

  key(id: number): number {
    return id;
  }

  *ids(): IterableIterator<number> {
    const p = this.present;
    for (let k = 0; k < p.length; k++) if (p[k] === 1) yield k;
  }
}
