import { KeyList } from './list.js';
import type { AccessInfo, EvictionPolicy } from './policy.js';

/** LRU where, among the keys one request touched, the deepest is evicted first. */
export class LeafLruPolicy<K> implements EvictionPolicy<K> {
  readonly name = 'lru-leaf';
  private readonly list = new KeyList<K>();
  private lastNow = NaN;
  private lastChain = -1;
  private lastDepth = -1;
  private lastNode = 0;

  get size(): number {
    return this.list.size;
  }

  private place(key: K, info: AccessInfo): void {
    const l = this.list;
    if (
      info.now === this.lastNow &&
      info.chainLength === this.lastChain &&
      info.depth === this.lastDepth + 1 &&
      l.keys[this.lastNode] !== undefined
    ) {
      this.lastNode = l.pushBefore(key, this.lastNode);
    } else {
      this.lastNode = l.push(key);
    }
    this.lastNow = info.now;
    this.lastChain = info.chainLength;
    this.lastDepth = info.depth;
  }

  insert(key: K, info: AccessInfo): void {
    this.place(key, info);
  }

  touch(key: K, info: AccessInfo): void {
    if (this.list.node.has(key)) this.place(key, info);
  }

  remove(key: K): void {
    this.list.delete(key);
  }

  victim(evictable?: (key: K) => boolean): K | undefined {
    return this.list.first(evictable);
  }
}
