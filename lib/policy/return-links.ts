/**
 * The prefix tree of the `return-time` policy (return-time.ts), as far as it knows it: per node
 * (a block), its parent and child, the blocks before and after it in the last request that
 * placed both. A block whose parent is evicted is an orphan: no prefix lookup can reach it.
 */
import { FIRST_NODE } from './return-classes.js';
import { grow } from './return-groups.js';

export class PrefixLinks {
  parent: Int32Array = new Int32Array(16);
  child: Int32Array = new Int32Array(16);

  /** Makes room for node n. */
  growNodes(n: number): void {
    if (n < this.parent.length) return;
    let size = this.parent.length * 2;
    while (size <= n) size *= 2;
    this.parent = grow(this.parent, size);
    this.child = grow(this.child, size);
  }

  /** Node n follows node `at` (0: n is a root as far as known). */
  link(n: number, at: number): void {
    this.parent[n] = at;
    if (at !== 0) this.child[at] = n;
  }

  /** Node n is new: no links. */
  clear(n: number): void {
    this.parent[n] = 0;
    this.child[n] = 0;
  }

  /** Node n leaves the tree; returns its child that hung from it (0: none). */
  cut(n: number): number {
    const c = this.child[n]!;
    const orphan = c >= FIRST_NODE && this.parent[c] === n ? c : 0;
    this.child[n] = 0;
    const p = this.parent[n]!;
    if (p !== 0 && this.child[p] === n) this.child[p] = 0;
    this.parent[n] = 0;
    return orphan;
  }
}
