/**
 * Engine-given priorities on top of any policy: blocks of a higher priority (a shared system
 * prompt) are evicted only when no block of a lower priority (a one-off request) is left to
 * evict. Each priority gets its own instance of the base policy, so recency, frequency and the
 * prefix-tree rules still decide within a class.
 *
 * While every block has priority 0 (every trace without priorities, and any engine that never
 * sets one) this adds one branch per call and nothing else: the base policy runs alone.
 */
import { forget, type AccessInfo, type EvictionPolicy } from './policy.js';

export class PriorityPolicy<K> implements EvictionPolicy<K> {
  readonly name: string;
  private readonly base: EvictionPolicy<K>;
  /** Classes other than 0, by priority; created on first use. */
  private readonly classes = new Map<number, EvictionPolicy<K>>();
  /** Priorities in ascending order, 0 included once any other class exists. */
  private order: number[] = [];
  /** The priority of every key not in class 0. */
  private readonly keyClass = new Map<K, number>();

  constructor(
    private readonly create: (capacity: number) => EvictionPolicy<K>,
    private readonly capacity: number,
  ) {
    this.base = create(capacity);
    this.name = this.base.name;
    // Prediction (prefetch) passes through while there is one class: the base policy sees all.
    const b = this.base;
    if (b.forecast && b.worth && b.victimWorth && b.stage) {
      const one = (): boolean => this.classes.size === 0;
      this.forecast = (now, max) => (one() ? b.forecast!(now, max) : []);
      this.worth = (key, now) => (one() ? b.worth!(key, now) : -1);
      this.victimWorth = (now) => (one() ? b.victimWorth!(now) : Infinity);
      this.stage = (key, now) => one() && b.stage!(key, now);
    }
  }

  readonly forecast?: (now: number, maxKeys: number) => K[];
  readonly worth?: (key: K, now: number) => number;
  readonly victimWorth?: (now: number) => number;
  readonly stage?: (key: K, now: number) => boolean;

  get size(): number {
    let n = this.base.size;
    for (const c of this.classes.values()) n += c.size;
    return n;
  }

  private classFor(priority: number): EvictionPolicy<K> {
    if (priority === 0) return this.base;
    let c = this.classes.get(priority);
    if (!c) {
      c = this.create(this.capacity);
      this.classes.set(priority, c);
      this.order = [0, ...this.classes.keys()].sort((a, b) => a - b);
    }
    return c;
  }

  private classOf(key: K): number {
    return this.keyClass.size === 0 ? 0 : (this.keyClass.get(key) ?? 0);
  }

  insert(key: K, info: AccessInfo): void {
    const p = info.priority;
    if (p === 0 && this.keyClass.size === 0) return this.base.insert(key, info);
    const old = this.classOf(key);
    if (old !== p) {
      this.classFor(old).remove(key);
      this.dropIfEmpty(old);
    }
    this.classFor(p).insert(key, info);
    if (p === 0) this.keyClass.delete(key);
    else this.keyClass.set(key, p);
  }

  touch(key: K, info: AccessInfo): void {
    const current = this.classOf(key);
    // A block asked for at a higher priority than it has climbs to that class; it never falls.
    if (info.priority > current) return this.insert(key, info);
    this.classFor(current).touch(key, info);
  }

  remove(key: K): void {
    const p = this.classOf(key);
    this.classFor(p).remove(key);
    if (p !== 0) this.keyClass.delete(key);
    this.dropIfEmpty(p);
  }

  forget(key: K): void {
    const p = this.classOf(key);
    forget(this.classFor(p), key);
    if (p !== 0) this.keyClass.delete(key);
    this.dropIfEmpty(p);
  }

  /**
   * A priority class that holds no key any more goes: memory stays bounded by the priorities in
   * use, not by every priority ever seen, and prediction (which needs one class) comes back once
   * the prioritised blocks are gone.
   */
  private dropIfEmpty(p: number): void {
    if (p === 0) return;
    const c = this.classes.get(p);
    if (c === undefined || c.size > 0) return;
    this.classes.delete(p);
    this.order = [0, ...this.classes.keys()].sort((a, b) => a - b);
  }

  victim(evictable?: (key: K) => boolean): K | undefined {
    if (this.classes.size === 0) return this.base.victim(evictable);
    for (const p of this.order) {
      const v = this.classFor(p).victim(evictable);
      if (v !== undefined) return v;
    }
    return undefined;
  }

  miss(key: K, info: AccessInfo): void {
    // A miss creates no class: a class exists while it holds keys.
    const c = info.priority === 0 ? this.base : this.classes.get(info.priority);
    c?.miss?.(key, info);
  }

  admit(key: K, info: AccessInfo, victim: K): boolean {
    return this.base.admit ? this.base.admit(key, info, victim) : true;
  }
}
