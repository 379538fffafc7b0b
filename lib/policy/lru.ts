import type { AccessInfo, EvictionPolicy } from './policy.js';

/**
 * Least recently used. A Map keeps insertion order, so deleting and re-inserting a key moves it
 * to the most recent end in O(1) with no per-key node objects.
 */
export class LruPolicy<K> implements EvictionPolicy<K> {
  readonly name = 'lru';
  private readonly order = new Map<K, true>();

  get size(): number {
    return this.order.size;
  }

  insert(key: K, _info: AccessInfo): void {
    this.order.delete(key);
    this.order.set(key, true);
  }

  touch(key: K, _info: AccessInfo): void {
    if (this.order.delete(key)) this.order.set(key, true);
  }

  remove(key: K): void {
    this.order.delete(key);
  }

  victim(evictable?: (key: K) => boolean): K | undefined {
    for (const key of this.order.keys()) {
      if (!evictable || evictable(key)) return key;
    }
    return undefined;
  }
}
