import type { AccessInfo, EvictionPolicy } from './policy.js';

/**
 * Belady's MIN: evicts the key whose next use lies farthest ahead, and does not admit a key whose
 * next use is farther than that of every resident key. It needs `AccessInfo.next` (the simulator
 * reads the trace ahead to supply it), so it is an offline bound, not a policy to deploy.
 *
 * An indexed binary max-heap on the next-use time: O(log n) per access, no per-access allocation.
 */
export class BeladyPolicy<K> implements EvictionPolicy<K> {
  readonly name = 'belady';
  private readonly keys: K[] = [];
  private readonly next: number[] = [];
  private readonly pos = new Map<K, number>();

  get size(): number {
    return this.keys.length;
  }

  insert(key: K, info: AccessInfo): void {
    const p = this.pos.get(key);
    const next = info.next ?? Infinity;
    if (p !== undefined) {
      this.update(p, next);
      return;
    }
    const i = this.keys.length;
    this.keys.push(key);
    this.next.push(next);
    this.pos.set(key, i);
    this.up(i);
  }

  touch(key: K, info: AccessInfo): void {
    const p = this.pos.get(key);
    if (p !== undefined) this.update(p, info.next ?? Infinity);
  }

  remove(key: K): void {
    const p = this.pos.get(key);
    if (p === undefined) return;
    this.pos.delete(key);
    const lastKey = this.keys.pop()!;
    const lastNext = this.next.pop()!;
    if (p < this.keys.length) {
      this.keys[p] = lastKey;
      this.next[p] = lastNext;
      this.pos.set(lastKey, p);
      this.up(p);
      this.down(this.pos.get(lastKey)!);
    }
  }

  victim(evictable?: (key: K) => boolean): K | undefined {
    if (this.keys.length === 0) return undefined;
    const top = this.keys[0]!;
    if (!evictable || evictable(top)) return top;
    let best: K | undefined;
    let bestNext = -Infinity;
    for (let i = 0; i < this.keys.length; i++) {
      const k = this.keys[i]!;
      if (this.next[i]! > bestNext && evictable(k)) {
        best = k;
        bestNext = this.next[i]!;
      }
    }
    return best;
  }

  admit(_key: K, info: AccessInfo, victim: K): boolean {
    const p = this.pos.get(victim);
    return p === undefined || (info.next ?? Infinity) < this.next[p]!;
  }

  private update(p: number, next: number): void {
    const old = this.next[p]!;
    this.next[p] = next;
    if (next > old) this.up(p);
    else if (next < old) this.down(p);
  }

  private up(i: number): void {
    const { keys, next, pos } = this;
    const k = keys[i]!;
    const v = next[i]!;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (next[parent]! >= v) break;
      keys[i] = keys[parent]!;
      next[i] = next[parent]!;
      pos.set(keys[i]!, i);
      i = parent;
    }
    keys[i] = k;
    next[i] = v;
    pos.set(k, i);
  }

  private down(i: number): void {
    const { keys, next, pos } = this;
    const n = keys.length;
    const k = keys[i]!;
    const v = next[i]!;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const m = r < n && next[r]! > next[l]! ? r : l;
      if (next[m]! <= v) break;
      keys[i] = keys[m]!;
      next[i] = next[m]!;
      pos.set(keys[i]!, i);
      i = m;
    }
    keys[i] = k;
    next[i] = v;
    pos.set(k, i);
  }
}
