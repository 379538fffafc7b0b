import { KeyList } from './list.js';
import type { AccessInfo, EvictionPolicy } from './policy.js';

/** Least recently used, on an intrusive linked list (O(1) per access, no per-access allocation). */
export class LruPolicy<K> implements EvictionPolicy<K> {
  readonly name = 'lru';
  private readonly list = new KeyList<K>();

  get size(): number {
    return this.list.size;
  }

  insert(key: K, _info: AccessInfo): void {
    this.list.push(key);
  }

  touch(key: K, _info: AccessInfo): void {
    const n = this.list.node.get(key);
    if (n !== undefined) this.list.moveToTail(n);
  }

  remove(key: K): void {
    this.list.delete(key);
  }

  victim(evictable?: (key: K) => boolean): K | undefined {
    return this.list.first(evictable);
  }
}
