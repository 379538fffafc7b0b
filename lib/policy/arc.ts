import { KeyList } from './list.js';
import type { AccessInfo, EvictionPolicy } from './policy.js';

/**
 * ARC (Megiddo & Modha, FAST '03) adapted to the EvictionPolicy interface: keys seen once (T1) and
 * seen again (T2), ghosts of both (B1, B2) that remember recently evicted keys, and a target size
 * p for T1 that moves towards whichever ghost list is being hit. No tuning knobs.
 *
 * `leafFirst`: among keys touched by the same request, the deeper one is evicted first (a block is
 * worth nothing to a prefix lookup once its parent is gone).
 */
export class ArcPolicy<K> implements EvictionPolicy<K> {
  readonly name: string;
  private readonly t1 = new KeyList<K>();
  private readonly t2 = new KeyList<K>();
  private readonly b1 = new KeyList<K>();
  private readonly b2 = new KeyList<K>();
  private p = 0;
  private lastNow = NaN;
  private lastChain = -1;
  private lastDepth = -1;
  private lastList: KeyList<K> | undefined;
  private lastNode = 0;

  constructor(
    private readonly capacity: number,
    private readonly leafFirst = false,
  ) {
    this.name = leafFirst ? 'arc-leaf' : 'arc';
  }

  get size(): number {
    return this.t1.size + this.t2.size;
  }

  private place(list: KeyList<K>, key: K, info: AccessInfo): void {
    if (
      this.leafFirst &&
      this.lastList === list &&
      info.now === this.lastNow &&
      info.chainLength === this.lastChain &&
      info.depth === this.lastDepth + 1 &&
      list.keys[this.lastNode] !== undefined
    ) {
      this.lastNode = list.pushBefore(key, this.lastNode);
    } else {
      this.lastNode = list.push(key);
    }
    this.lastList = list;
    this.lastNow = info.now;
    this.lastChain = info.chainLength;
    this.lastDepth = info.depth;
  }

  insert(key: K, info: AccessInfo): void {
    if (this.t1.node.has(key) || this.t2.node.has(key)) {
      this.touch(key, info);
      return;
    }
    if (this.b1.delete(key) || this.b2.delete(key)) this.place(this.t2, key, info);
    else this.place(this.t1, key, info);
  }

  touch(key: K, info: AccessInfo): void {
    if (this.t1.delete(key)) this.place(this.t2, key, info);
    else if (this.t2.node.has(key)) this.place(this.t2, key, info);
  }

  miss(key: K, _info: AccessInfo): void {
    const b1 = this.b1.size;
    const b2 = this.b2.size;
    if (this.b1.node.has(key)) this.p = Math.min(this.capacity, this.p + Math.max(b2 / b1, 1));
    else if (this.b2.node.has(key)) this.p = Math.max(0, this.p - Math.max(b1 / b2, 1));
  }

  remove(key: K): void {
    if (this.t1.delete(key)) {
      this.b1.push(key);
      if (this.b1.size > this.capacity) this.b1.shift();
    } else if (this.t2.delete(key)) {
      this.b2.push(key);
      if (this.b2.size > this.capacity) this.b2.shift();
    }
  }

  victim(evictable?: (key: K) => boolean): K | undefined {
    const fromT1 = this.t1.size > 0 && this.t1.size >= Math.max(1, this.p);
    const a = fromT1 ? this.t1 : this.t2;
    const b = fromT1 ? this.t2 : this.t1;
    return a.first(evictable) ?? b.first(evictable);
  }
}
