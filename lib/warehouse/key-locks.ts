/**
 * Per-key locks: a key with a put, promotion, eviction or ingest in progress is "settling", and
 * other operations on it wait for it to end instead of reading a slot that is being rewritten.
 *
 * Callers wait with `while (locks.unsettled(keys)) await locks.settle(keys);`: the check runs
 * synchronously right before they continue, so no other operation slips in between, and an
 * operation on keys nobody holds pays no await at all.
 */
import type { Key } from '../keys/keys.js';

/** Keys marked as changing until release(). */
export interface Hold {
  add(keys: Iterable<Key>): void;
  release(): void;
}

export class KeyLocks {
  private readonly settling = new Map<Key, Promise<unknown>>();

  /** Whether an operation is changing `key`. */
  has(key: Key): boolean {
    return this.settling.has(key);
  }

  unsettled(keys: readonly Key[]): boolean {
    for (const k of keys) if (this.settling.has(k)) return true;
    return false;
  }

  /** Waits for the operations changing any of `keys` to end (then check unsettled() again). */
  async settle(keys: readonly Key[]): Promise<void> {
    const waits = new Set<Promise<unknown>>();
    for (const k of keys) {
      const p = this.settling.get(k);
      if (p) waits.add(p);
    }
    await Promise.allSettled(waits);
  }

  /** Marks keys as changing until release() is called; keys may be added as they are known. */
  hold(): Hold {
    let release!: () => void;
    const p = new Promise<void>((r) => (release = r));
    const held: Key[] = [];
    return {
      add: (keys) => {
        for (const k of keys) {
          this.settling.set(k, p);
          held.push(k);
        }
      },
      release: () => {
        for (const k of held) if (this.settling.get(k) === p) this.settling.delete(k);
        release();
      },
    };
  }
}
