/**
 * BlockIndex: where every block lives, and the placement decisions that keep each tier within its
 * capacity. It moves no bytes. The Warehouse executes the moves it plans (copying real blocks);
 * `kvtier sim` commits them at once (accounting only). Both run this same code.
 *
 * A block may live in several tiers at once (a write-through copy on disk under a hot copy in host
 * memory): evicting a block that has a copy lower down costs nothing, and only a block whose last
 * copy is evicted is written down (demoted) or dropped.
 */
import { forget, type AccessInfo } from '../policy/policy.js';
import { boolean, options as readOptions } from '../core/validate.js';
import { BlockRows } from './block-rows.js';
import { MapKeyIds, type KeyIds } from './key-ids.js';
import { TenantSlots, type Owners } from './tenant-slots.js';
import {
  checkTierConfigs,
  tierAccounts,
  type TierAccount,
  type TierConfig,
} from './tier-accounts.js';

export { ABSENT, type BlockEntry, type Move, type Plan } from './plans.js';
import { ABSENT, type BlockEntry, type Move, type Plan } from './plans.js';
export { DENSE_KEY_LIMIT, DenseKeyIds, MapKeyIds, type KeyIds } from './key-ids.js';
export type { Owners } from './tenant-slots.js';
export type { TierAccount, TierConfig, TierCounters } from './tier-accounts.js';

export interface BlockIndexOptions<K> {
  /** Whether a block evicted from its last tier is written to the next one (default true). */
  demote?: boolean;
  /** How keys map to rows (default: a Map, for any key type). */
  ids?: KeyIds<K>;
  /** Owners with quotas (tenants): usage per owner and tier kept, and victims chosen by them. */
  owners?: Owners<K>;
}

/**
 * The index keeps each block's row in typed arrays, by id (block-rows.ts): no object per block.
 * get() and the iterator hand out snapshots (BlockEntry objects).
 */
export class BlockIndex<K> {
  readonly tiers: TierAccount<K>[];
  private readonly ids: KeyIds<K>;
  private readonly nt: number;
  private readonly rows: BlockRows<K>;
  private readonly free: number[][];
  private readonly nextSlot: number[];
  /** Whether a block evicted from its last tier is written to the next one (write-back). */
  private readonly demote: boolean;
  private readonly evictable: ((key: K) => boolean)[];
  /** Moves of place(): pooled, since place() hands no plan out. */
  private readonly scratch: Move<K>[] = [];
  private scratchN = 0;
  private readonly demoteInfo: AccessInfo = { now: 0, priority: 0, depth: 0, chainLength: 0 };
  /** For victims put back into their policy by rollback(): the clock of the last placement. */
  private readonly restoreInfo: AccessInfo = { now: 0, priority: 0, depth: 0, chainLength: 1 };
  /** Whether the slot the last reserve() returned was free (else an evicted block's). */
  private fresh = false;
  /** Slots per owner (tenant) and tier, when there are owners. */
  private readonly tenants: TenantSlots<K> | undefined;

  constructor(tiers: TierConfig<K>[], options: BlockIndexOptions<K> = {}) {
    tiers = checkTierConfigs(tiers);
    options = readOptions<BlockIndexOptions<K>>(options, 'options', ['demote', 'ids', 'owners']);
    if (options.demote !== undefined) boolean(options.demote, 'options.demote');
    this.tiers = tierAccounts(tiers);
    this.nt = tiers.length;
    this.ids = options.ids ?? new MapKeyIds<K>();
    this.rows = new BlockRows(this.ids, this.nt);
    this.free = tiers.map(() => []);
    this.nextSlot = tiers.map(() => 0);
    this.demote = options.demote ?? true;
    this.tenants = options.owners ? new TenantSlots(options.owners, this.nt) : undefined;
    this.evictable = tiers.map(() => (key: K) => {
      const id = this.ids.get(key);
      // Any placement in flight for the key (in any tier) keeps it from being a victim: evicting
      // a copy whose key is being placed elsewhere could demote it into the very tier that plan
      // fills, leaving two slots in flight for one key.
      return id >= 0 && this.rows.pinned[id] === 0 && this.rows.busyBits[id] === 0;
    });
  }

  get size(): number {
    return this.ids.size;
  }

  /** Slots `owner` holds (or has reserved) in `tier`; 0 without owners. */
  usage(owner: number, tier: number): number {
    return this.tenants?.usage(owner, tier) ?? 0;
  }

  /** A snapshot of the block's entry (changes to the index later do not show in it). */
  get(key: K): BlockEntry | undefined {
    const id = this.ids.get(key);
    return id < 0 ? undefined : this.rows.entry(id);
  }

  /** The highest tier (lowest number) holding the key, or ABSENT. */
  topTier(key: K): number {
    const id = this.ids.get(key);
    return id < 0 ? ABSENT : this.rows.top(id);
  }

  /**
   * How many leading keys of a chain are cached, and (in `tiersOut`, when given) the top tier of
   * each of those. No side effects on policies.
   */
  prefix(keys: readonly K[], tiersOut?: number[]): number {
    let n = 0;
    for (const key of keys) {
      const id = this.ids.get(key);
      if (id < 0) break;
      if (tiersOut) tiersOut[n] = this.rows.top(id);
      n++;
    }
    return n;
  }

  /**
   * Records a read of `key`: a hit on its top tier (the policy there learns of it), or a miss.
   * Returns the tier it was found in, or ABSENT.
   */
  access(key: K, info: AccessInfo): number {
    const id = this.ids.get(key);
    const top = id < 0 ? this.nt : this.rows.top(id);
    for (let t = 0; t < top; t++) {
      const tier = this.tiers[t]!;
      tier.stats.misses++;
      tier.policy.miss?.(key, info);
    }
    if (id < 0) return ABSENT;
    const tier = this.tiers[top]!;
    tier.stats.hits++;
    tier.policy.touch(key, info);
    return top;
  }

  /**
   * A held key written again (a put of a block already there): its priority rises to the put's,
   * and the policy of its top tier is told, as place() does for a key already in the tier. No hit
   * or miss is counted. False when the key is not held.
   */
  rewrite(key: K, info: AccessInfo): boolean {
    const id = this.ids.get(key);
    if (id < 0) return false;
    const top = this.rows.top(id);
    if ((this.rows.busyBits[id]! & (1 << top)) !== 0) return true; // being moved: its commit tells
    if (info.priority > this.rows.prio[id]!) this.rows.prio[id] = info.priority;
    this.tiers[top]!.policy.touch(key, info);
    return true;
  }

  /**
   * Plans giving `key` a slot in `tier`, evicting (and where needed demoting) other blocks.
   * Returns undefined when the tier is full of blocks that cannot be evicted, or when its policy
   * will not admit the key. Reserved slots and victims stay reserved until commit() or abort().
   */
  plan(key: K, tier: number, info: AccessInfo): Plan<K> | undefined {
    const id = this.ids.get(key);
    if (id >= 0 && this.rows.slot[id * this.nt + tier] !== ABSENT) {
      return { key, tier, slot: this.rows.slot[id * this.nt + tier]!, fresh: false, moves: [] };
    }
    const moves: Move<K>[] = [];
    const slot = this.makeRoom(key, tier, info, id, moves);
    if (slot === ABSENT) return undefined;
    // The policy hears of the key now, before the next plan picks its victim: a put of many
    // blocks then evicts what the simulator's block-by-block place() evicts (the same hits).
    // A staged block (predictive prefetch) rejoins its old group: no request put it there.
    const policy = this.tiers[tier]!.policy;
    if (!(info.staged === true && policy.stage?.(key, info.now) === true)) {
      policy.insert(key, info);
    }
    return { key, tier, slot, fresh: this.fresh, moves, told: true };
  }

  /**
   * Applies a plan once its moves (and the key's own copy) are done: locations, policies and
   * counters change together.
   */
  commit(plan: Plan<K>, info: AccessInfo, meta: { length: number; checksum: number }): void {
    const { key, tier, slot, moves } = plan;
    this.finish(key, tier, slot, moves, moves.length, info, meta, plan.told === true);
  }

  /**
   * plan() and commit() at once, for callers that move no bytes (`kvtier sim`): nothing is
   * allocated (the moves are pooled). Returns whether the key is now there.
   */
  place(
    key: K,
    tier: number,
    info: AccessInfo,
    meta: { length: number; checksum: number },
  ): boolean {
    const id = this.ids.get(key);
    if (id >= 0 && this.rows.slot[id * this.nt + tier] !== ABSENT) {
      if ((this.rows.busyBits[id]! & (1 << tier)) === 0) {
        this.rows.len[id] = meta.length;
        this.rows.sum[id] = meta.checksum;
        if (info.priority > this.rows.prio[id]!) this.rows.prio[id] = info.priority;
        this.tiers[tier]!.policy.touch(key, info);
      } else {
        this.commit({ ...this.plan(key, tier, info)!, told: false }, info, meta);
      }
      return true;
    }
    this.scratchN = 0;
    const slot = this.makeRoom(key, tier, info, id, this.scratch);
    if (slot === ABSENT) return false;
    this.finish(key, tier, slot, this.scratch, this.scratchN, info, meta);
    return true;
  }

  /**
   * Applies a plan's moves but gives its slot to no key: the slot stays taken (counted as used,
   * never a victim) until adopt() gives it a key or unclaim() frees it. For memory that is filled
   * before anyone knows which key it holds (a peer server's landing slots).
   */
  claim(plan: Plan<K>, info: AccessInfo): number {
    for (const m of plan.moves) this.applyMove(m, info);
    // The slot holds no key yet: adopt() tells the policy of the one it gets.
    if (plan.told) forget(this.tiers[plan.tier]!.policy, plan.key);
    return plan.slot;
  }

  /**
   * Gives a claimed slot of `tier` to `key`, which must hold no copy in that tier and not be
   * planned there (the caller holds it). The key's bytes are already in the slot.
   */
  adopt(
    key: K,
    tier: number,
    slot: number,
    info: AccessInfo,
    meta: { length: number; checksum: number },
  ): void {
    this.tenants?.adopt(key, tier);
    this.finish(key, tier, slot, this.scratch, 0, info, meta);
  }

  /** Frees a claimed slot. */
  unclaim(tier: number, slot: number): void {
    this.tenants?.unclaim(tier);
    this.release(tier, slot);
  }

  /** Releases what plan() reserved, leaving everything as it was. */
  abort(plan: Plan<K>): void {
    const id = this.ids.get(plan.key);
    if (id >= 0 && this.rows.slot[id * this.nt + plan.tier] === plan.slot) return; // already there
    if (id >= 0) this.rows.busyBits[id]! &= ~(1 << plan.tier);
    this.tenants?.charge(plan.key, plan.tier, -1);
    if (plan.told) forget(this.tiers[plan.tier]!.policy, plan.key);
    this.rollback(plan.moves, plan.moves.length);
    if (plan.fresh) this.release(plan.tier, plan.slot);
  }

  /**
   * Releases what plan() reserved once its slot may have been written (a copy into it failed part
   * way or failed verification): a victim's bytes there may be gone, so it must not get that slot
   * back. Its move is applied instead (it keeps the copy written down for it, or is dropped as
   * planned, the bytes being lost either way) and the slot is freed. A plan with a fresh slot
   * displaced nobody: abort().
   */
  discard(plan: Plan<K>, info: AccessInfo): void {
    if (plan.fresh || plan.moves.length === 0) {
      this.abort(plan);
      return;
    }
    const id = this.ids.get(plan.key);
    if (id >= 0 && this.rows.slot[id * this.nt + plan.tier] === plan.slot) return; // already there
    if (id >= 0) this.rows.busyBits[id]! &= ~(1 << plan.tier);
    this.tenants?.charge(plan.key, plan.tier, -1);
    if (plan.told) forget(this.tiers[plan.tier]!.policy, plan.key);
    for (const m of plan.moves) this.applyMove(m, info);
    this.release(plan.tier, plan.slot);
  }

  /**
   * Sets the checksum of `key`'s block: what a lossy tier's copy decoded to, once that copy is the
   * only one (reads.ts). False when the key is not held.
   */
  setChecksum(key: K, checksum: number): boolean {
    const id = this.ids.get(key);
    if (id < 0) return false;
    this.rows.sum[id] = checksum;
    return true;
  }

  /** Drops the copy of `key` in `tier` (or every copy), freeing the slots. */
  remove(key: K, tier?: number): boolean {
    const id = this.ids.get(key);
    if (id < 0) return false;
    const row = id * this.nt;
    let last = ABSENT;
    for (let t = 0; t < this.nt; t++) {
      if ((tier === undefined || tier === t) && this.rows.slot[row + t] !== ABSENT) {
        this.release(t, this.rows.slot[row + t]!);
        this.tenants?.charge(key, t, -1);
        this.rows.slot[row + t] = ABSENT;
        this.tiers[t]!.policy.remove(key);
        last = t;
      }
    }
    if (this.rows.top(id) === ABSENT) this.gone(key, id, last);
    return true;
  }

  pin(key: K): boolean {
    const id = this.ids.get(key);
    if (id < 0) return false;
    this.rows.pinned[id]!++;
    return true;
  }

  unpin(key: K): void {
    const id = this.ids.get(key);
    if (id >= 0 && this.rows.pinned[id]! > 0) this.rows.pinned[id]!--;
  }

  /** Every (key, entry snapshot), for persistence and checks. */
  *[Symbol.iterator](): IterableIterator<[K, BlockEntry]> {
    for (const id of [...this.ids.ids()]) yield [this.ids.key(id), this.rows.entry(id)];
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
    let id = this.ids.get(key);
    if (id < 0) id = this.rows.add(key, meta, info.priority);
    this.rows.slot[id * this.nt + tier] = slot;
    this.tenants?.charge(key, tier, 1);
    const t = this.tiers[tier]!;
    t.used++;
    this.nextSlot[tier] = Math.max(this.nextSlot[tier]!, slot + 1);
    t.policy.insert(key, info);
  }

  /** After restore(): slots below the highest used one that nobody holds become free. */
  rebuildFreeSlots(tier: number): void {
    const taken = new Set<number>();
    for (const id of this.ids.ids()) {
      const s = this.rows.slot[id * this.nt + tier]!;
      if (s !== ABSENT) taken.add(s);
    }
    const free: number[] = [];
    for (let s = this.nextSlot[tier]! - 1; s >= 0; s--) if (!taken.has(s)) free.push(s);
    this.free[tier] = free;
  }

  /** Reserves a slot for `key` in `tier` (its moves into `moves`); ABSENT when there is none. */
  private makeRoom(key: K, tier: number, info: AccessInfo, id: number, moves: Move<K>[]): number {
    if (info.now > this.restoreInfo.now) this.restoreInfo.now = info.now;
    // The key's own copies are the source of this placement (a promotion): while the plan makes
    // room, they must not be chosen as victims, or a demotion could overwrite the copy to be read.
    if (id >= 0) this.rows.pinned[id]!++;
    const slot = this.reserve(tier, key, info, moves, 0);
    if (id >= 0) this.rows.pinned[id]!--;
    if (slot === ABSENT) {
      this.rollback(moves, moves === this.scratch ? this.scratchN : moves.length);
      return ABSENT;
    }
    if (id >= 0) this.rows.busyBits[id]! |= 1 << tier;
    return slot;
  }

  private finish(
    key: K,
    tierNo: number,
    slot: number,
    moves: readonly Move<K>[],
    count: number,
    info: AccessInfo,
    meta: { length: number; checksum: number },
    told = false,
  ): void {
    for (let i = 0; i < count; i++) this.applyMove(moves[i]!, info);
    let id = this.ids.get(key);
    const tier = this.tiers[tierNo]!;
    if (id < 0) {
      id = this.rows.add(key, meta, info.priority);
    } else {
      this.rows.len[id] = meta.length;
      this.rows.sum[id] = meta.checksum;
      this.rows.prio[id] = Math.max(this.rows.prio[id]!, info.priority);
    }
    this.rows.busyBits[id]! &= ~(1 << tierNo);
    const at = id * this.nt + tierNo;
    if (this.rows.slot[at] === ABSENT) {
      const from = this.rows.top(id);
      this.rows.slot[at] = slot;
      if (!told) tier.policy.insert(key, info);
      if (from !== ABSENT && from > tierNo) tier.stats.promotions++;
      else tier.stats.inserts++;
    } else {
      tier.policy.touch(key, info);
    }
  }

  /** A slot for a new copy in `tier` (ABSENT: none); sets `fresh`. */
  private reserve(
    tier: number,
    forKey: K,
    info: AccessInfo,
    moves: Move<K>[],
    depth: number,
  ): number {
    const t = this.tiers[tier]!;
    const o = this.tenants;
    const owner = o ? o.owners.of(forKey) : 0;
    // An owner at its quota makes room with its own blocks, even where slots are free.
    const capped = o !== undefined && o.owners.atQuota(tier, owner);
    if (t.used < t.capacity && !capped) {
      t.used++;
      o?.take(owner, tier);
      const free = this.free[tier]!;
      this.fresh = true;
      return free.length > 0 ? free.pop()! : this.nextSlot[tier]!++;
    }
    const victim = o
      ? o.owners.victim(tier, owner, capped, this.evictable[tier]!, forKey, depth)
      : t.policy.victim(this.evictable[tier]);
    if (victim === undefined) return ABSENT;
    if (depth === 0 && t.policy.admit && !t.policy.admit(forKey, info, victim)) return ABSENT;
    o?.pass(owner, victim, tier);
    const v = this.ids.get(victim);
    const vSlot = this.rows.slot[v * this.nt + tier]!;
    this.rows.busyBits[v]! |= 1 << tier;
    // The victim leaves the policy as soon as it is chosen (as in the simulator, where the move
    // is applied at once), so the next victim is chosen without it; rollback() brings it back.
    t.policy.remove(victim);
    if (this.rows.lowerCopy(v, tier) === ABSENT && this.demote && tier + 1 < this.nt) {
      // Nested moves are pushed first: the lower tier must make room before the victim lands.
      const to = this.reserve(tier + 1, victim, info, moves, depth + 1);
      if (to === ABSENT) {
        this.addMove(moves, victim, tier, vSlot, ABSENT, ABSENT, false);
      } else {
        this.rows.busyBits[v]! |= 1 << (tier + 1);
        this.addMove(moves, victim, tier, vSlot, tier + 1, to, this.fresh);
      }
    } else {
      this.addMove(moves, victim, tier, vSlot, ABSENT, ABSENT, false);
    }
    // The victim's slot passes straight to the new key; `used` stays the same.
    this.fresh = false;
    return vSlot;
  }

  private addMove(
    moves: Move<K>[],
    key: K,
    fromTier: number,
    fromSlot: number,
    toTier: number,
    toSlot: number,
    toFresh: boolean,
  ): void {
    if (moves !== this.scratch) {
      moves.push({ key, fromTier, fromSlot, toTier, toSlot, toFresh });
      return;
    }
    const m = moves[this.scratchN];
    if (m === undefined) {
      moves.push({ key, fromTier, fromSlot, toTier, toSlot, toFresh });
    } else {
      m.key = key;
      m.fromTier = fromTier;
      m.fromSlot = fromSlot;
      m.toTier = toTier;
      m.toSlot = toSlot;
      m.toFresh = toFresh;
    }
    this.scratchN++;
  }

  private applyMove(m: Move<K>, info: AccessInfo): void {
    const id = this.ids.get(m.key);
    if (id < 0) return;
    const row = id * this.nt;
    const from = this.tiers[m.fromTier]!;
    this.rows.busyBits[id]! &= ~(1 << m.fromTier);
    this.rows.slot[row + m.fromTier] = ABSENT;
    // Its policy let it go when reserve() chose it.
    from.stats.evictions++;
    if (m.toTier !== ABSENT) {
      const to = this.tiers[m.toTier]!;
      this.rows.busyBits[id]! &= ~(1 << m.toTier);
      this.rows.slot[row + m.toTier] = m.toSlot;
      const d = this.demoteInfo;
      d.now = info.now;
      d.priority = this.rows.prio[id]!;
      d.depth = info.depth;
      d.chainLength = info.chainLength;
      d.next = info.next;
      to.policy.insert(m.key, d);
      to.stats.demotions++;
    }
    if (this.rows.top(id) === ABSENT) this.gone(m.key, id, m.fromTier);
  }

  /** The row of `key` holds no copy any more: its last one left from `tier`. */
  private gone(key: K, id: number, tier: number): void {
    this.ids.delete(key, id);
    this.tenants?.left(key, tier);
  }

  private rollback(moves: readonly Move<K>[], count: number): void {
    // Undo in reverse: victims become evictable again and reserved lower slots are released.
    for (let i = count - 1; i >= 0; i--) {
      const m = moves[i]!;
      const id = this.ids.get(m.key);
      if (id >= 0) {
        this.rows.busyBits[id]! &= ~(1 << m.fromTier);
        // Back in the policy it left when chosen (as a fresh insertion: what it knew is lost),
        // unless its copy there was dropped meanwhile (a corrupt read).
        if (this.rows.slot[id * this.nt + m.fromTier] !== ABSENT) {
          const r = this.restoreInfo;
          r.priority = this.rows.prio[id]!;
          this.tiers[m.fromTier]!.policy.insert(m.key, r);
        }
      }
      // The victim holds its slot again, and gives back the one reserved for it lower down.
      this.tenants?.charge(m.key, m.fromTier, 1);
      if (m.toTier !== ABSENT) {
        this.tenants?.charge(m.key, m.toTier, -1);
        if (id >= 0) this.rows.busyBits[id]! &= ~(1 << m.toTier);
        if (m.toFresh) this.release(m.toTier, m.toSlot);
      }
    }
  }

  private release(tier: number, slot: number): void {
    this.tiers[tier]!.used--;
    this.free[tier]!.push(slot);
  }
}
