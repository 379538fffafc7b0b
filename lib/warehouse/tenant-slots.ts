/**
 * The BlockIndex's ledger of slots per tenant (its "owners") and tier: who a block belongs to, how
 * many slots each owner holds or has reserved in each tier, and the owner's say in which block
 * makes room for whom (the quotas themselves live in tenant-quotas.ts). Kept apart from the
 * index's rows so that an index without owners (`kvtier sim`) carries none of it.
 *
 * A slot is charged to its new owner when it is planned, and given back to the victim if the plan
 * is aborted; a claimed slot (a peer server's landing slot) is charged to owner 0 until adopt()
 * names its key.
 */

/**
 * Owners of blocks (tenants, lib/warehouse/tenants.ts): who a key belongs to, whether an owner is
 * at its quota in a tier, and which block makes room for whom. Without owners the index is as it
 * always was (one policy per tier decides).
 */
export interface Owners<K> {
  /** Owner count, 0 (no owner) included: owners are 0 .. count-1. */
  readonly count: number;
  /** The key's owner (0: none). A pure function of the key, so it needs no row. */
  of(key: K): number;
  /** Whether `owner` taking one more slot of `tier` would pass its quota there. */
  atQuota(tier: number, owner: number): boolean;
  /**
   * The block of `tier` to evict for a new copy of a key of `owner` (its own when `capped`), or
   * undefined when none may go. `depth` > 0: forKey is itself a victim being written down.
   */
  victim(
    tier: number,
    owner: number,
    capped: boolean,
    evictable: (key: K) => boolean,
    forKey: K,
    depth: number,
  ): K | undefined;
  /**
   * The key's block left the index: its last copy, in `tier`, was dropped (evicted for space,
   * removed, or found corrupt). Called inside the index's operation, so it must not call back.
   */
  left?(key: K, tier: number): void;
}

export class TenantSlots<K> {
  /** Slots per owner and tier (owner * tiers + tier), reserved ones included. */
  private readonly owned: Float64Array;

  constructor(
    readonly owners: Owners<K>,
    private readonly tiers: number,
  ) {
    this.owned = new Float64Array(owners.count * tiers);
  }

  /** Slots `owner` holds (or has reserved) in `tier`. */
  usage(owner: number, tier: number): number {
    return this.owned[owner * this.tiers + tier] ?? 0;
  }

  /** `n` slots of `tier` more (or, negative, fewer) for the owner of `key`. */
  charge(key: K, tier: number, n: number): void {
    this.owned[this.owners.of(key) * this.tiers + tier]! += n;
  }

  /** A slot of `tier` taken by `owner`: a free one, or a victim's (see pass()). */
  take(owner: number, tier: number): void {
    this.owned[owner * this.tiers + tier]! += 1;
  }

  /** The victim's slot of `tier` passes to `owner`. */
  pass(owner: number, victim: K, tier: number): void {
    this.take(owner, tier);
    this.charge(victim, tier, -1);
  }

  /** A claimed slot of `tier` (charged to owner 0, a landing name) passes to `key`'s owner. */
  adopt(key: K, tier: number): void {
    this.owned[tier]! -= 1;
    this.charge(key, tier, 1);
  }

  /** The key's last copy, in `tier`, is gone. */
  left(key: K, tier: number): void {
    this.owners.left?.(key, tier);
  }

  /** A claimed slot of `tier` is freed. */
  unclaim(tier: number): void {
    this.owned[tier]! -= 1;
  }
}
