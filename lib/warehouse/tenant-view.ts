/**
 * TenantView: one tenant's face of a Warehouse (warehouse.tenant(name)), with the Warehouse's own
 * signatures and results. Every key the caller gives is mapped to the tenant's internal key
 * (tenant-keys.ts) before the store sees it, so whatever keys a caller sends, it only ever reaches
 * its own tenant's blocks; the tenant's default priority, minimum prefix, quotas, retention and
 * counters apply on the way.
 */
import { checkTarget, type Target } from '../core/engine.js';
import { toKeys, type Key, type KeyChain, type KeyLike } from '../keys/keys.js';
import { ABSENT } from './block-index.js';
import { scopeCall, type CallOptions } from './calls.js';
import { checkPutOptions, leaseId } from './options.js';
import type { Tenancy, Tenant } from './tenants.js';
import type {
  EvictResult,
  GetOptions,
  GetResult,
  LandingSlot,
  Lease,
  LentBlock,
  LookupResult,
  PrefetchOptions,
  PrefetchResult,
  PutOptions,
  PutResult,
  PutStatus,
  Reservation,
  TenantStats,
} from './types.js';

/** The Warehouse methods a view runs on (operator methods over internal keys). */
export interface TenantStore {
  put(keys: readonly KeyLike[], src: Target, options?: PutOptions): Promise<PutResult>;
  get(keys: readonly KeyLike[], dst: Target, options?: GetOptions): Promise<GetResult>;
  lookup(keys: readonly KeyLike[], options?: CallOptions): LookupResult;
  prefetch(keys: readonly KeyLike[], options?: PrefetchOptions): Promise<PrefetchResult>;
  evict(keys: readonly KeyLike[]): Promise<EvictResult>;
  pin(keys: readonly KeyLike[], options?: { ttlMs?: number }): Lease;
  unpin(lease: Lease): void;
  readonly hostSlots: {
    inPlace(): boolean;
    claim(count: number): Promise<LandingSlot[]>;
    land(
      keys: readonly Key[],
      slots: readonly LandingSlot[],
      checksums: ArrayLike<number>,
    ): Promise<boolean[]>;
    giveBack(slots: readonly LandingSlot[]): void;
    reserve(
      keys: readonly KeyLike[],
      priority?: number,
      options?: CallOptions,
    ): Promise<Reservation | undefined>;
    readonly persists: boolean;
    persist(keys: readonly Key[]): Promise<boolean[]>;
    lend<T>(
      keys: readonly KeyLike[],
      use: (places: (LentBlock | undefined)[]) => Promise<T>,
      options?: CallOptions,
    ): Promise<T>;
  };
}

export class TenantView {
  readonly name: string;
  /**
   * @internal The tenant-scoped host-slot interface for servers (the peer server's landing
   * path): the same as warehouse.hostSlots, over this tenant's internal keys and counters.
   */
  readonly hostSlots: TenantHostSlots;
  /** Leases this view handed out: another tenant's lease id is not this view's to end. */
  private readonly leases = new Map<number, number>();

  constructor(
    private readonly store: TenantStore,
    private readonly tenancy: Tenancy,
    private readonly tenant: Tenant,
  ) {
    this.name = tenant.config.name;
    this.hostSlots = new TenantHostSlots(store, tenancy, tenant);
  }

  private internal(keys: KeyChain | readonly KeyLike[]): Key[] {
    return this.tenant.keys.internalAll(toKeys(keys));
  }

  private fresh(): Promise<void> {
    return this.tenancy.fresh();
  }

  /**
   * Warehouse.put for this tenant, at the tenant's priority unless one is given. A chain shorter
   * than minPrefixTokens stores nothing ('too-short'); a block that would pass the tenant's quota
   * in every tier it could go to, with none of the tenant's own blocks able to make room, is
   * 'no-space'. Another tenant's blocks are never touched to make room for it.
   */
  async put(
    keys: KeyChain | readonly KeyLike[],
    src: Target,
    given: PutOptions = {},
  ): Promise<PutResult> {
    const list = this.internal(keys);
    checkTarget(src, 'src');
    const options = checkPutOptions(given);
    const c = this.tenant.config;
    if (list.length * this.tenancy.blockTokens < c.minPrefixTokens) {
      const unique = new Set(list).size;
      return { stored: 0, present: 0, rejected: unique, status: list.map(() => 'too-short') };
    }
    await this.fresh();
    const { refused } = this.tenancy.owners;
    for (const k of list) refused.delete(k);
    const result = await this.store.put(list, src, {
      ...scopeCall(options, this.name),
      priority: options.priority ?? c.priority,
    });
    const status: PutStatus[] = result.status.map((s, i) =>
      s === 'busy' && refused.has(list[i]!) ? 'no-space' : s,
    );
    for (const k of list) refused.delete(k);
    this.tenancy.countAt(this.tenant, 'written', firstStored(list, status, result.tiers));
    this.tenancy.used(
      this.tenant,
      list.filter((_, i) => status[i] === 'stored' || status[i] === 'present'),
    );
    return { ...result, status };
  }

  /** Warehouse.get for this tenant: hits are counted as its cache reads. */
  async get(
    keys: KeyChain | readonly KeyLike[],
    dst: Target,
    options: GetOptions = {},
  ): Promise<GetResult> {
    const list = this.internal(keys);
    const scoped = scopeCall(options, this.name);
    await this.fresh();
    const result = await this.store.get(list, dst, scoped);
    // Where each hit was served from (-1 for a miss).
    this.tenancy.countAt(this.tenant, 'read', result.tiers);
    this.tenancy.used(
      this.tenant,
      list.filter((_, i) => result.found[i]),
    );
    return result;
  }

  /** Warehouse.lookup for this tenant; a block past its time-to-live is not reported. */
  lookup(keys: KeyChain | readonly KeyLike[], options: CallOptions = {}): LookupResult {
    const list = this.internal(keys);
    const result = this.store.lookup(list, scopeCall(options, this.name));
    const retention = this.tenant.retention;
    if (retention) {
      const now = this.tenancy.now();
      let stale = false;
      list.forEach((k, i) => {
        if (result.tiers[i] !== ABSENT && retention.expired(k, now)) {
          result.tiers[i] = ABSENT;
          stale = true;
        }
      });
      if (stale) {
        let prefix = 0;
        while (prefix < result.tiers.length && result.tiers[prefix] !== ABSENT) prefix++;
        result.prefix = prefix;
        void this.tenancy.sweep().catch(() => undefined);
      }
    }
    return result;
  }

  async prefetch(
    keys: KeyChain | readonly KeyLike[],
    options: PrefetchOptions = {},
  ): Promise<PrefetchResult> {
    const list = this.internal(keys);
    const scoped = scopeCall(options, this.name);
    await this.fresh();
    return this.store.prefetch(list, scoped);
  }

  /** Warehouse.evict for this tenant's blocks (not counted as evicted: the tenant asked). */
  async evict(keys: KeyChain | readonly KeyLike[]): Promise<EvictResult> {
    const list = this.internal(keys);
    const { explicit } = this.tenancy;
    const marked = list.filter((k) => !explicit.has(k));
    for (const k of marked) explicit.add(k);
    try {
      return await this.store.evict(list);
    } finally {
      for (const k of marked) explicit.delete(k);
    }
  }

  /** Warehouse.pin for this tenant (a use, for retention); the lease names the caller's keys. */
  pin(keys: KeyChain | readonly KeyLike[], options: { ttlMs?: number } = {}): Lease {
    const given = toKeys(keys);
    const list = this.tenant.keys.internalAll(given);
    const lease = this.store.pin(list, options);
    const held = new Set(lease.keys);
    const mine: Lease = {
      id: lease.id,
      keys: given.filter((_, i) => held.has(list[i]!)),
      expiresAt: lease.expiresAt,
    };
    // An engine pins what it is about to read: for retention that is a use.
    this.tenancy.used(
      this.tenant,
      list.filter((k) => held.has(k)),
    );
    const now = this.tenancy.now();
    for (const [id, until] of this.leases) if (until <= now) this.leases.delete(id);
    this.leases.set(lease.id, lease.expiresAt);
    return mine;
  }

  /** Ends one of this view's leases early; idempotent, and a no-op for any other lease. */
  unpin(lease: Lease): void {
    const id = leaseId(lease);
    if (!this.leases.delete(id)) return;
    this.store.unpin(lease);
  }

  stats(): TenantStats {
    return this.tenancy.stats(this.tenant);
  }
}

/**
 * warehouse.hostSlots for one tenant: the peer server's in-place landing path, with keys mapped
 * and blocks counted as the tenant's writes and reads. Slots claimed before their keys are known
 * belong to no tenant until land(); a landing may pass the tenant's quota by the blocks landed at
 * once, and then the tenant's own blocks are the first victims of its next placements.
 */
export class TenantHostSlots {
  constructor(
    private readonly store: TenantStore,
    private readonly tenancy: Tenancy,
    private readonly tenant: Tenant,
  ) {}

  private internal(keys: readonly KeyLike[]): Key[] {
    return this.tenant.keys.internalAll(toKeys(keys));
  }

  inPlace(): boolean {
    return this.store.hostSlots.inPlace();
  }

  claim(count: number): Promise<LandingSlot[]> {
    return this.store.hostSlots.claim(count);
  }

  giveBack(slots: readonly LandingSlot[]): void {
    this.store.hostSlots.giveBack(slots);
  }

  async land(
    keys: readonly KeyLike[],
    slots: readonly LandingSlot[],
    checksums: ArrayLike<number>,
  ): Promise<boolean[]> {
    const list = this.internal(keys);
    const stored = await this.store.hostSlots.land(list, slots, checksums);
    this.wrote(list, stored);
    return stored;
  }

  /**
   * hostSlots.reserve for this tenant, with put's rules: a chain shorter than minPrefixTokens gets
   * every slot 'rejected' (nothing stored), and the blocks take the tenant's priority (whatever
   * priority is given).
   */
  async reserve(
    keys: readonly KeyLike[],
    _priority?: number,
    options: CallOptions = {},
  ): Promise<Reservation | undefined> {
    const list = this.internal(keys);
    const scoped = scopeCall(options, this.tenant.config.name);
    const c = this.tenant.config;
    if (list.length * this.tenancy.blockTokens < c.minPrefixTokens) {
      return {
        slots: list.map(() => 'rejected' as const),
        commit: () => Promise.resolve({ stored: [], present: 0 }),
        abort: () => undefined,
      };
    }
    await this.tenancy.fresh();
    const r = await this.store.hostSlots.reserve(list, c.priority, scoped);
    if (!r) return r;
    return {
      slots: r.slots,
      commit: async (checksums?: ArrayLike<number>) => {
        const done = await r.commit(checksums);
        this.wrote(
          done.stored.map((i) => list[i]!),
          done.stored.map(() => true),
        );
        return done;
      },
      abort: () => r.abort(),
    };
  }

  get persists(): boolean {
    return this.store.hostSlots.persists;
  }

  persist(keys: readonly KeyLike[]): Promise<boolean[]> {
    return this.store.hostSlots.persist(this.internal(keys));
  }

  async lend<T>(
    keys: readonly KeyLike[],
    use: (places: (LentBlock | undefined)[]) => Promise<T>,
    options: CallOptions = {},
  ): Promise<T> {
    const list = this.internal(keys);
    const scoped = scopeCall(options, this.tenant.config.name);
    // Blocks past their retention are not lent (and their clock does not restart): as lookup.
    await this.tenancy.fresh();
    return this.store.hostSlots.lend(
      list,
      async (places) => {
        const hit = list.filter((_, i) => places[i] !== undefined);
        // Lent copies are host-tier copies (tier 0).
        this.tenancy.count(this.tenant, 'read', 0, hit.length);
        this.tenancy.used(this.tenant, hit);
        return use(places);
      },
      scoped,
    );
  }

  private wrote(keys: readonly Key[], stored: readonly boolean[]): void {
    const landed = keys.filter((_, i) => stored[i]);
    // In-place landings go into host-tier slots (tier 0).
    this.tenancy.count(this.tenant, 'written', 0, landed.length);
    this.tenancy.used(this.tenant, landed);
  }
}

/**
 * Per key position, the tier its block was written into, counting each stored key once (at its
 * first mention, as PutResult.stored does); -1 elsewhere.
 */
function firstStored(
  keys: readonly Key[],
  status: readonly PutStatus[],
  tiers: readonly number[] | undefined,
): number[] {
  const seen = new Set<Key>();
  return keys.map((k, i) => {
    if (status[i] !== 'stored' || seen.has(k)) return -1;
    seen.add(k);
    return tiers?.[i] ?? -1;
  });
}
