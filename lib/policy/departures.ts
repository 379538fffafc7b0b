/**
 * A policy wrapped to hear which keys leave it: predictive prefetch (the Warehouse's staging and
 * the simulator's) counts a staged block that leaves its tier unread. Everything else passes
 * through, including the prediction members; a staged block skips the admission filter, since
 * it already passed the staging worth gate (admission filters judge requests).
 */
import type { EvictionPolicy } from './policy.js';

export function onDeparture<K>(
  inner: EvictionPolicy<K>,
  left: (key: K) => void,
): EvictionPolicy<K> {
  const wrapped: EvictionPolicy<K> = {
    name: inner.name,
    get size() {
      return inner.size;
    },
    insert: (key, info) => inner.insert(key, info),
    touch: (key, info) => inner.touch(key, info),
    remove(key) {
      inner.remove(key);
      left(key);
    },
    forget(key) {
      if (inner.forget) inner.forget(key);
      else inner.remove(key);
      left(key);
    },
    victim: (evictable) => inner.victim(evictable),
  };
  if (inner.miss) wrapped.miss = (key, info) => inner.miss!(key, info);
  if (inner.admit) {
    wrapped.admit = (key, info, victim) => info.staged === true || inner.admit!(key, info, victim);
  }
  if (inner.forecast) wrapped.forecast = (now, max) => inner.forecast!(now, max);
  if (inner.worth) wrapped.worth = (key, now) => inner.worth!(key, now);
  if (inner.victimWorth) wrapped.victimWorth = (now) => inner.victimWorth!(now);
  if (inner.stage) wrapped.stage = (key, now) => inner.stage!(key, now);
  return wrapped;
}
