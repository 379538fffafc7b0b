/**
 * The BlockIndex's rows: each block's slot per tier, length, checksum, priority, pins and busy
 * bits, in typed arrays indexed by the block's id (key-ids.ts hands ids out and reuses them). No
 * object per block, so no allocation per insertion and good locality when victims are chosen over
 * millions of blocks (`kvtier sim`). The index decides; this only stores, so it holds no policy,
 * tier account or owner.
 */
import type { KeyIds } from './key-ids.js';
import { ABSENT, type BlockEntry } from './plans.js';

export class BlockRows<K> {
  /** Slot of row `id` in tier `t` at `id * nt + t`; ABSENT where the block has no copy. */
  slot: Int32Array = new Int32Array(0);
  len: Float64Array = new Float64Array(0);
  sum: Float64Array = new Float64Array(0);
  prio: Float64Array = new Float64Array(0);
  pinned: Int32Array = new Int32Array(0);
  /** Bit `t` set: the block is being copied into or out of tier `t` (BlockEntry.busy). */
  busyBits: Int32Array = new Int32Array(0);
  /** Rows the arrays have room for. */
  private rows = 0;

  constructor(
    private readonly ids: KeyIds<K>,
    /** Tiers per row. */
    readonly nt: number,
  ) {
    this.grow(1024);
  }

  /** A row for a key not held yet, with no copy in any tier. Returns its id. */
  add(key: K, meta: { length: number; checksum: number }, priority: number): number {
    const id = this.ids.add(key);
    if (id >= this.rows) this.grow(id + 1);
    const row = id * this.nt;
    for (let t = 0; t < this.nt; t++) this.slot[row + t] = ABSENT;
    this.len[id] = meta.length;
    this.sum[id] = meta.checksum;
    this.prio[id] = priority;
    this.pinned[id] = 0;
    this.busyBits[id] = 0;
    return id;
  }

  /** A snapshot of row `id`: the index's later changes do not show in it. */
  entry(id: number): BlockEntry {
    const slots: number[] = [];
    for (let t = 0; t < this.nt; t++) slots.push(this.slot[id * this.nt + t]!);
    return {
      slots,
      length: this.len[id]!,
      checksum: this.sum[id]!,
      priority: this.prio[id]!,
      pins: this.pinned[id]!,
      busy: this.busyBits[id]!,
    };
  }

  /** The highest tier holding row `id`, or ABSENT. */
  top(id: number): number {
    const s = this.slot;
    const row = id * this.nt;
    for (let t = 0; t < this.nt; t++) if (s[row + t] !== ABSENT) return t;
    return ABSENT;
  }

  /** The highest tier below `tier` holding row `id`, or ABSENT. */
  lowerCopy(id: number, tier: number): number {
    const row = id * this.nt;
    for (let t = tier + 1; t < this.nt; t++) if (this.slot[row + t] !== ABSENT) return t;
    return ABSENT;
  }

  /** Room for `rows` rows at least, doubling (copies are rare: amortised over the insertions). */
  private grow(rows: number): void {
    if (rows <= this.rows) return;
    let n = Math.max(1024, this.rows * 2);
    while (n < rows) n *= 2;
    const slot = new Int32Array(n * this.nt).fill(ABSENT);
    slot.set(this.slot);
    this.slot = slot;
    const f64 = (a: Float64Array): Float64Array => {
      const b = new Float64Array(n);
      b.set(a);
      return b;
    };
    const i32 = (a: Int32Array): Int32Array => {
      const b = new Int32Array(n);
      b.set(a);
      return b;
    };
    this.len = f64(this.len);
    this.sum = f64(this.sum);
    this.prio = f64(this.prio);
    this.pinned = i32(this.pinned);
    this.busyBits = i32(this.busyBits);
    this.rows = n;
  }
}
