/**
 * BlockIndex: where every block lives, and the placement decisions that keep each tier within its
 * capacity. It moves no bytes. The Warehouse executes the moves it plans (copying real blocks);
 * `kvtier sim` commits them at once (accounting only). Both run this same code.
 *
 * A block may live in several tiers at once (a write-through copy on disk under a hot copy in host
 * memory): evicting a block that has a copy lower down costs nothing, and only a block whose last
 * copy is evicted is written down (demoted) or dropped.
 */
import type { AccessInfo, EvictionPolicy } from '../policy/policy.js';

export const ABSENT = -1;

export interface BlockEntry {
  /** Slot per tier, ABSENT where the block has no copy. */
  readonly slots: number[];
  /** Payload bytes (the Warehouse's blockBytes, or less for a partial block). */
  length: number;
  /** crc32c of the payload. */
  checksum: number;
  priority: number;
  /** Leases held by readers and pin(); a pinned block is never evicted. */
  pins: number;
  /** Tiers where the block is being copied in or out: not evictable there until committed. */
  busy: number;
}

export interface TierAccount<K> {
  readonly name: string;
  /** Capacity in slots (blocks). */
  readonly capacity: number;
  readonly policy: EvictionPolicy<K>;
  /** Slots in use or reserved. */
  used: number;
  readonly stats: TierCounters;
}

export interface TierCounters {
  hits: number;
  misses: number;
  inserts: number;
  evictions: number;
  promotions: number;
  demotions: number;
}

/** One step of a plan: copy `key` from one tier's slot to another's, or drop that copy. */
export interface Move<K> {
  key: K;
  fromTier: number;
  fromSlot: number;
  /** ABSENT: the copy in fromTier is dropped without being written anywhere. */
  toTier: number;
  toSlot: number;
  /** Whether toSlot was free (true) or is the slot of a block evicted by a later move. */
  toFresh: boolean;
}

/**
 * What must happen before `key` can occupy `slot` in `tier`: `moves` in order (each frees the
 * slot a later step, or the key, reuses).
 */
export interface Plan<K> {
  key: K;
  tier: number;
  slot: number;
  /** Whether slot was free (true) or comes from an evicted block. */
  fresh: boolean;
  moves: Move<K>[];
}

export interface TierConfig<K> {
  name: string;
  capacity: number;
  policy: EvictionPolicy<K>;
}

export class BlockIndex<K> {
  readonly tiers: TierAccount<K>[];
  private readonly entries = new Map<K, BlockEntry>();
  private readonly free: number[][];
  private readonly nextSlot: number[];
  /** Whether a block evicted from its last tier is written to the next one (write-back). */
  private readonly demote: boolean;
  private readonly evictable: ((key: K) => boolean)[];

  constructor(tiers: TierConfig<K>[], options: { demote?: boolean } = {}) {
    this.tiers = tiers.map((t) => ({
      name: t.name,
      capacity: t.capacity,
      policy: t.policy,
      used: 0,
      stats: { hits: 0, misses: 0, inserts: 0, evictions: 0, promotions: 0, demotions: 0 },
    }));
    this.free = tiers.map(() => []);
    this.nextSlot = tiers.map(() => 0);
    this.demote = options.demote ?? true;
    this.evictable = tiers.map((_, t) => (key: K) => {
      const e = this.entries.get(key);
      return e !== undefined && e.pins === 0 && (e.busy & (1 << t)) === 0;
    });
  }

  get size(): number {
    return this.entries.size;
  }

  get(key: K): BlockEntry | undefined {
    return this.entries.get(key);
  }

  /** The highest tier (lowest number) holding the key, or ABSENT. */
  topTier(key: K): number {
    const e = this.entries.get(key);
    return e === undefined ? ABSENT : topOf(e);
  }

  /**
   * How many leading keys of a chain are cached, and (in `tiersOut`, when given) the top tier of
   * each of those. No side effects on policies.
   */
  prefix(keys: readonly K[], tiersOut?: number[]): number {
    let n = 0;
    for (const key of keys) {
      const e = this.entries.get(key);
      if (e === undefined) break;
      if (tiersOut) tiersOut[n] = topOf(e);
      n++;
    }
    return n;
  }

  /**
   * Records a read of `key`: a hit on its top tier (the policy there learns of it), or a miss.
   * Returns the tier it was found in, or ABSENT.
   */
  access(key: K, info: AccessInfo): number {
    const e = this.entries.get(key);
    if (e === undefined) {
      for (const t of this.tiers) {
        t.stats.misses++;
        t.policy.miss?.(key, info);
      }
      return ABSENT;
    }
    const top = topOf(e);
    for (let t = 0; t < top; t++) {
      this.tiers[t]!.stats.misses++;
      this.tiers[t]!.policy.miss?.(key, info);
    }
    const tier = this.tiers[top]!;
    tier.stats.hits++;
    tier.policy.touch(key, info);
    return top;
  }

  /**
   * Plans giving `key` a slot in `tier`, evicting (and where needed demoting) other blocks.
   * Returns undefined when the tier is full of blocks that cannot be evicted, or when its policy
   * will not admit the key. Reserved slots and victims stay reserved until commit() or abort().
   */
  plan(key: K, tier: number, info: AccessInfo): Plan<K> | undefined {
    const existing = this.entries.get(key);
    if (existing !== undefined && existing.slots[tier] !== ABSENT) {
      return { key, tier, slot: existing.slots[tier]!, fresh: false, moves: [] };
    }
    const moves: Move<K>[] = [];
    // The key's own copies are the source of this placement (a promotion): while the plan makes
    // room, they must not be chosen as victims, or a demotion could overwrite the copy to be read.
    if (existing) existing.pins++;
    const got = this.reserve(tier, key, info, moves, 0);
    if (existing) existing.pins--;
    if (got === undefined) {
      this.rollback(moves);
      return undefined;
    }
    if (existing) existing.busy |= 1 << tier;
    return { key, tier, slot: got.slot, fresh: got.fresh, moves };
  }

  /**
   * Applies a plan once its moves (and the key's own copy) are done: locations, policies and
   * counters change together.
   */
  commit(plan: Plan<K>, info: AccessInfo, meta: { length: number; checksum: number }): void {
    for (const m of plan.moves) this.applyMove(m, info);
    let e = this.entries.get(plan.key);
    const tier = this.tiers[plan.tier]!;
    if (e === undefined) {
      e = {
        slots: this.absentSlots(),
        length: meta.length,
        checksum: meta.checksum,
        priority: info.priority,
        pins: 0,
        busy: 0,
      };
      this.entries.set(plan.key, e);
    } else {
      e.length = meta.length;
      e.checksum = meta.checksum;
      e.priority = Math.max(e.priority, info.priority);
    }
    e.busy &= ~(1 << plan.tier);
    if (e.slots[plan.tier] === ABSENT) {
      const from = topOf(e);
      e.slots[plan.tier] = plan.slot;
      tier.policy.insert(plan.key, info);
      if (from !== ABSENT && from > plan.tier) tier.stats.promotions++;
      else tier.stats.inserts++;
    } else {
      tier.policy.touch(plan.key, info);
    }
  }

  /**
   * plan() and commit() at once, for callers that move no bytes (`kvtier sim`): a key already in
   * the tier is only touched, without allocating a plan. Returns whether the key is now there.
   */
  place(
    key: K,
    tier: number,
    info: AccessInfo,
    meta: { length: number; checksum: number },
  ): boolean {
    const e = this.entries.get(key);
    if (e !== undefined && e.slots[tier] !== ABSENT && (e.busy & (1 << tier)) === 0) {
      e.length = meta.length;
      e.checksum = meta.checksum;
      if (info.priority > e.priority) e.priority = info.priority;
      this.tiers[tier]!.policy.touch(key, info);
      return true;
    }
    const plan = this.plan(key, tier, info);
    if (plan === undefined) return false;
    this.commit(plan, info, meta);
    return true;
  }

  /** Releases what plan() reserved, leaving everything as it was. */
  abort(plan: Plan<K>): void {
    const e = this.entries.get(plan.key);
    if (e !== undefined && e.slots[plan.tier] === plan.slot) return; // it was already there
    if (e !== undefined) e.busy &= ~(1 << plan.tier);
    this.rollback(plan.moves);
    if (plan.fresh) this.release(plan.tier, plan.slot);
  }

  /** Drops the copy of `key` in `tier` (or every copy), freeing the slots. */
  remove(key: K, tier?: number): boolean {
    const e = this.entries.get(key);
    if (e === undefined) return false;
    for (let t = 0; t < this.tiers.length; t++) {
      if ((tier === undefined || tier === t) && e.slots[t] !== ABSENT) {
        this.release(t, e.slots[t]!);
        e.slots[t] = ABSENT;
        this.tiers[t]!.policy.remove(key);
      }
    }
    if (topOf(e) === ABSENT) this.entries.delete(key);
    return true;
  }

  pin(key: K): boolean {
    const e = this.entries.get(key);
    if (e === undefined) return false;
    e.pins++;
    return true;
  }

  unpin(key: K): void {
    const e = this.entries.get(key);
    if (e !== undefined && e.pins > 0) e.pins--;
  }

  /** Every (key, entry), for persistence and checks. */
  *[Symbol.iterator](): IterableIterator<[K, BlockEntry]> {
    yield* this.entries;
  }

  /**
   * Records a block found at a known place (rebuilding a file tier's index on open). The slot
   * must be free.
   */
  restore(
    key: K,
    tier: number,
    slot: number,
    meta: { length: number; checksum: number },
    info: AccessInfo,
  ): void {
    let e = this.entries.get(key);
    if (e === undefined) {
      e = {
        slots: this.absentSlots(),
        length: meta.length,
        checksum: meta.checksum,
        priority: info.priority,
        pins: 0,
        busy: 0,
      };
      this.entries.set(key, e);
    }
    e.slots[tier] = slot;
    const t = this.tiers[tier]!;
    t.used++;
    this.nextSlot[tier] = Math.max(this.nextSlot[tier]!, slot + 1);
    t.policy.insert(key, info);
  }

  /** After restore(): slots below the highest used one that nobody holds become free. */
  rebuildFreeSlots(tier: number): void {
    const taken = new Set<number>();
    for (const e of this.entries.values()) if (e.slots[tier] !== ABSENT) taken.add(e.slots[tier]!);
    const free: number[] = [];
    for (let s = this.nextSlot[tier]! - 1; s >= 0; s--) if (!taken.has(s)) free.push(s);
    this.free[tier] = free;
  }

  private reserve(
    tier: number,
    forKey: K,
    info: AccessInfo,
    moves: Move<K>[],
    depth: number,
  ): { slot: number; fresh: boolean } | undefined {
    const t = this.tiers[tier]!;
    if (t.used < t.capacity) {
      t.used++;
      const free = this.free[tier]!;
      return { slot: free.length > 0 ? free.pop()! : this.nextSlot[tier]!++, fresh: true };
    }
    const victim = t.policy.victim(this.evictable[tier]);
    if (victim === undefined) return undefined;
    if (depth === 0 && t.policy.admit && !t.policy.admit(forKey, info, victim)) return undefined;
    const v = this.entries.get(victim)!;
    const vSlot = v.slots[tier]!;
    v.busy |= 1 << tier;
    const drop = {
      key: victim,
      fromTier: tier,
      fromSlot: vSlot,
      toTier: ABSENT,
      toSlot: ABSENT,
      toFresh: false,
    };
    if (this.lowerCopy(v, tier) === ABSENT && this.demote && tier + 1 < this.tiers.length) {
      // Nested moves are pushed first: the lower tier must make room before the victim lands.
      const to = this.reserve(tier + 1, victim, info, moves, depth + 1);
      if (to === undefined) {
        moves.push(drop);
      } else {
        v.busy |= 1 << (tier + 1);
        moves.push({ ...drop, toTier: tier + 1, toSlot: to.slot, toFresh: to.fresh });
      }
    } else {
      moves.push(drop);
    }
    // The victim's slot passes straight to the new key; `used` stays the same.
    return { slot: vSlot, fresh: false };
  }

  private absentSlots(): number[] {
    const slots: number[] = [];
    for (let t = 0; t < this.tiers.length; t++) slots.push(ABSENT);
    return slots;
  }

  private lowerCopy(e: BlockEntry, tier: number): number {
    for (let t = tier + 1; t < this.tiers.length; t++) if (e.slots[t] !== ABSENT) return t;
    return ABSENT;
  }

  private applyMove(m: Move<K>, info: AccessInfo): void {
    const e = this.entries.get(m.key);
    if (e === undefined) return;
    const from = this.tiers[m.fromTier]!;
    e.busy &= ~(1 << m.fromTier);
    e.slots[m.fromTier] = ABSENT;
    from.policy.remove(m.key);
    from.stats.evictions++;
    if (m.toTier !== ABSENT) {
      const to = this.tiers[m.toTier]!;
      e.busy &= ~(1 << m.toTier);
      e.slots[m.toTier] = m.toSlot;
      to.policy.insert(m.key, { ...info, priority: e.priority });
      to.stats.demotions++;
    }
    if (topOf(e) === ABSENT) this.entries.delete(m.key);
  }

  private rollback(moves: Move<K>[]): void {
    // Undo in reverse: victims become evictable again and reserved lower slots are released.
    for (let i = moves.length - 1; i >= 0; i--) {
      const m = moves[i]!;
      const e = this.entries.get(m.key);
      if (e !== undefined) e.busy &= ~(1 << m.fromTier);
      if (m.toTier !== ABSENT) {
        if (e !== undefined) e.busy &= ~(1 << m.toTier);
        if (m.toFresh) this.release(m.toTier, m.toSlot);
      }
    }
  }

  private release(tier: number, slot: number): void {
    this.tiers[tier]!.used--;
    this.free[tier]!.push(slot);
  }
}

function topOf(e: BlockEntry): number {
  const s = e.slots;
  for (let t = 0; t < s.length; t++) if (s[t] !== ABSENT) return t;
  return ABSENT;
}
