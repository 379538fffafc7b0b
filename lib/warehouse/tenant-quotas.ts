/**
 * Tenant quotas in the BlockIndex: whose block a key is, how many slots each tenant may hold per
 * tier, and which block makes room for whom. Each tier's policy is wrapped (TenantPolicy): one
 * instance orders every block of the tier, as without tenants, and one instance per tenant orders
 * that tenant's blocks alone, so "this tenant's next victim" is the policy's own O(1) answer, not
 * a scan.
 *
 * The victim for a new copy of a block of tenant R in tier t:
 *  1. R at its quota in t (a put, or a block of R demoted into t): one of R's own blocks, chosen
 *     by R's policy; if none can go, nothing (the put reports 'no-space'). This holds even where
 *     slots are free: a quota is a cap.
 *  2. Otherwise, a block of a tenant over its quota in t (the most over first): possible only
 *     when quotas were passed by in-place landings or after a restart.
 *  3. Otherwise, the tier's policy over every block (priority classes first, then the policy),
 *     skipping blocks of other tenants that have a quota in t (they are within it, and others
 *     must not push them below) or a 'pinned' retention class. Blocks of no tenant (the
 *     operator's) and of tenants without a quota in t are fair game.
 * So a tenant with a quota is only ever evicted from that tier by its own puts, its own
 * demotions, explicit evicts and expiry.
 */
import type { Key } from '../keys/keys.js';
import {
  forget,
  type AccessInfo,
  type EvictionPolicy,
  type PolicyFactory,
} from '../policy/policy.js';
import type { BlockIndex, Owners } from './block-index.js';
import { tagOf } from './tenant-keys.js';

/** Refusals remembered at most (the oldest forgotten first). */
const REFUSED_LIMIT = 65_536;

/** One tier's policy under tenancy: the whole tier's order, and each tenant's. */
export class TenantPolicy implements EvictionPolicy<Key> {
  readonly name: string;
  private readonly own: (EvictionPolicy<Key> | undefined)[] = [];

  constructor(
    readonly global: EvictionPolicy<Key>,
    private readonly create: () => EvictionPolicy<Key>,
    private readonly of: (key: Key) => number,
  ) {
    this.name = global.name;
  }

  get size(): number {
    return this.global.size;
  }

  /** The policy of one tenant's blocks in this tier. */
  tenant(owner: number): EvictionPolicy<Key> {
    let p = this.own[owner];
    if (!p) this.own[owner] = p = this.create();
    return p;
  }

  insert(key: Key, info: AccessInfo): void {
    this.global.insert(key, info);
    const o = this.of(key);
    if (o > 0) this.tenant(o).insert(key, info);
  }

  touch(key: Key, info: AccessInfo): void {
    this.global.touch(key, info);
    const o = this.of(key);
    if (o > 0) this.tenant(o).touch(key, info);
  }

  remove(key: Key): void {
    this.global.remove(key);
    const o = this.of(key);
    if (o > 0) this.own[o]?.remove(key);
  }

  forget(key: Key): void {
    forget(this.global, key);
    const o = this.of(key);
    const own = o > 0 ? this.own[o] : undefined;
    if (own) forget(own, key);
  }

  victim(evictable?: (key: Key) => boolean): Key | undefined {
    return this.global.victim(evictable);
  }

  miss(key: Key, info: AccessInfo): void {
    this.global.miss?.(key, info);
  }

  admit(key: Key, info: AccessInfo, victim: Key): boolean {
    return this.global.admit ? this.global.admit(key, info, victim) : true;
  }
}

/** What the quotas need of each tenant (owner 1..n, in configuration order). */
export interface QuotaTenant {
  readonly tag: string;
  /** Quota per tier name, before the tiers are known. */
  readonly quota: Readonly<Record<string, { bytes: number } | { share: number }>> | undefined;
  readonly pinned: boolean;
}

/** The Owners of a tenanted warehouse's BlockIndex. */
export class TenantOwners implements Owners<Key> {
  readonly count: number;
  private readonly byTag = new Map<string, number>();
  /** Quota in slots per owner and tier (owner * tiers + tier); Infinity: none. */
  private quotas = new Float64Array(0);
  private nt = 0;
  private index: BlockIndex<Key> | undefined;
  private policies: TenantPolicy[] = [];
  /**
   * Keys a quota turned away, for TenantView.put to tell 'no-space' from 'busy'. Bounded: other
   * placements (promotions, reservations) are refused too, and nobody asks about those.
   */
  readonly refused = new Set<Key>();
  /** Whether each owner's blocks are kept from other tenants' pressure ('pinned' retention). */
  private readonly pinned: boolean[];
  /** Told of every block that leaves the index, with the tier of its last copy (tenants.ts). */
  onLeft: ((key: Key, tier: number) => void) | undefined;

  constructor(
    private readonly tenants: readonly QuotaTenant[],
    private readonly blockBytes: number,
  ) {
    this.count = tenants.length + 1;
    tenants.forEach((t, i) => this.byTag.set(t.tag, i + 1));
    this.pinned = [false, ...tenants.map((t) => t.pinned)];
  }

  of = (key: Key): number => this.byTag.get(tagOf(key)) ?? 0;

  /** Bytes one block takes in each tier: blockBytes, or an encoding tier's stored size. */
  private units: number[] = [];

  /**
   * Resolves the quotas once the tiers are open (a share needs the tier's size). Bytes are the
   * tier's own: a quota in bytes on an encoding tier holds as many blocks as those bytes store.
   */
  bind(
    tiers: readonly { name: string; slots: number; codec?: { storedBlockBytes: number } }[],
  ): this {
    this.nt = tiers.length;
    this.units = tiers.map((t) => t.codec?.storedBlockBytes ?? this.blockBytes);
    this.quotas = new Float64Array(this.count * this.nt).fill(Infinity);
    this.tenants.forEach((t, i) => {
      for (const [name, q] of Object.entries(t.quota ?? {})) {
        const tier = tiers.findIndex((x) => x.name === name);
        const slots =
          'share' in q
            ? Math.floor(q.share * tiers[tier]!.slots)
            : Math.floor(q.bytes / this.units[tier]!);
        this.quotas[(i + 1) * this.nt + tier] = slots;
      }
    });
    return this;
  }

  /** Bytes one block takes in tier `tier` (for usage and quota in bytes). */
  unitBytes(tier: number): number {
    return this.units[tier] ?? this.blockBytes;
  }

  /** The policy of tier `tier` of `slots` blocks, wrapped to know each tenant's order too. */
  policy(tier: number, create: PolicyFactory, slots: number): TenantPolicy {
    const p = new TenantPolicy(create<Key>(slots, tier), () => create<Key>(slots, tier), this.of);
    this.policies[tier] = p;
    return p;
  }

  attach(index: BlockIndex<Key>): void {
    this.index = index;
  }

  /** Quota of `owner` in `tier`, in slots (Infinity: none). */
  quota(owner: number, tier: number): number {
    return this.quotas[owner * this.nt + tier] ?? Infinity;
  }

  private refuse(key: Key): void {
    if (this.refused.size >= REFUSED_LIMIT)
      this.refused.delete(this.refused.values().next().value!);
    this.refused.add(key);
  }

  left(key: Key, tier: number): void {
    this.onLeft?.(key, tier);
  }

  atQuota(tier: number, owner: number): boolean {
    if (owner === 0) return false;
    return this.index!.usage(owner, tier) + 1 > this.quota(owner, tier);
  }

  victim(
    tier: number,
    owner: number,
    capped: boolean,
    evictable: (key: Key) => boolean,
    forKey: Key,
    depth: number,
  ): Key | undefined {
    const policy = this.policies[tier]!;
    if (capped) {
      const v = policy.tenant(owner).victim(evictable);
      if (v === undefined && depth === 0) this.refuse(forKey);
      return v;
    }
    const index = this.index!;
    let over: { o: number; excess: number }[] | undefined;
    for (let o = 1; o < this.count; o++) {
      if (o === owner || this.pinned[o]) continue;
      const excess = index.usage(o, tier) - this.quota(o, tier);
      if (excess > 0) (over ??= []).push({ o, excess });
    }
    if (over) {
      over.sort((a, b) => b.excess - a.excess);
      for (const { o } of over) {
        const v = policy.tenant(o).victim(evictable);
        if (v !== undefined) return v;
      }
    }
    return policy.victim((key) => {
      if (!evictable(key)) return false;
      const o = this.of(key);
      return o === owner || o === 0 || (!this.pinned[o] && this.quota(o, tier) === Infinity);
    });
  }
}
