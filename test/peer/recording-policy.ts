import { LruPolicy, type AccessInfo, type EvictionPolicy } from '../../lib/index.js';

/** One insert or touch a tier's policy heard. */
export interface Heard {
  key: unknown;
  info: AccessInfo;
}

/**
 * A policy factory: LRU that records every insert and touch it hears into `heard`, so a test can
 * check which AccessInfo (session, hint, request) reached the policy.
 */
export function recordingPolicy(heard: Heard[]) {
  return <K>(_capacity: number): EvictionPolicy<K> => {
    const inner = new LruPolicy<K>();
    return new Proxy(inner, {
      get(target, prop, receiver): unknown {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (prop === 'insert' || prop === 'touch') {
          return (key: K, info: AccessInfo) => {
            heard.push({ key, info });
            (v as (k: K, i: AccessInfo) => void).call(target, key, info);
          };
        }
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  };
}
