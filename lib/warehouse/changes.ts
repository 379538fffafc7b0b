/**
 * The change feed: listeners (a cluster node) told, after each operation, which keys entered the
 * warehouse and which left it entirely.
 */
import type { Key } from '../keys/keys.js';
import { ABSENT, type BlockIndex, type Plan } from './block-index.js';
import type { ChangeListener } from './types.js';

export class ChangeFeed {
  private readonly listeners = new Set<ChangeListener>();

  constructor(private readonly index: BlockIndex<Key>) {}

  /** Whether anyone listens: operations skip collecting keys otherwise. */
  get active(): boolean {
    return this.listeners.size > 0;
  }

  /** Adds a listener; returns the function that removes it. */
  watch(listener: ChangeListener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  changed(added: readonly Key[], removed: readonly Key[]): void {
    if (this.listeners.size === 0 || (added.length === 0 && removed.length === 0)) return;
    for (const l of this.listeners) {
      try {
        l(added, removed);
      } catch {
        // A listener's bug must not fail the operation that already changed the store.
      }
    }
  }

  /** Adds to `out` the victims of a committed plan that left the warehouse entirely. */
  evictedBy(plan: Plan<Key>, out: Key[]): void {
    if (this.listeners.size === 0) return;
    for (const m of plan.moves) {
      if (m.toTier === ABSENT && !this.index.get(m.key)) out.push(m.key);
    }
  }
}
