/**
 * Tenancy: the tenants of one warehouse (docs/tenants.md, "The model"). It holds each tenant's
 * keys (tenant-keys.ts), quotas (tenant-quotas.ts, inside the BlockIndex), retention list
 * (tenant-retention.ts) and counters per tenant and tier, is told by the BlockIndex of every
 * block that leaves (to count evictions and expiry), expires blocks whose time-to-live ran out,
 * and reports stats. TenantView (tenant-view.ts) is what a tenant's caller holds.
 */
import { KvtierError } from '../core/errors.js';
import type { Key } from '../keys/keys.js';
import type { Parts } from './configure.js';
import { loadSecret, TenantKeys } from './tenant-keys.js';
import type { TenancyConfig, TenantConfig } from './tenant-options.js';
import { TenantOwners } from './tenant-quotas.js';
import { RetentionList, SweepTimer } from './tenant-retention.js';
import type { TenantCount, TenantStats, WarehouseOptions } from './types.js';
import { evictNow } from './writes.js';

const zero = (): TenantCount => ({ blocks: 0, bytes: 0, tokens: 0 });

/** What a tenant's counters count (docs/tenants.md, "Accounting"). */
export type TenantEvent = 'written' | 'read' | 'evicted' | 'expired';

const zeros = (): Record<TenantEvent, TenantCount> => ({
  written: zero(),
  read: zero(),
  evicted: zero(),
  expired: zero(),
});

/** One tenant's state. */
export interface Tenant {
  readonly config: TenantConfig;
  /** Its owner number in the BlockIndex (1..n). */
  readonly owner: number;
  readonly keys: TenantKeys;
  readonly retention: RetentionList | undefined;
  readonly written: TenantCount;
  readonly read: TenantCount;
  readonly evicted: TenantCount;
  readonly expired: TenantCount;
  /**
   * The same counters per tier: the local tiers, then the source tiers (a peer), as in
   * stats().tiers. Each total is the sum over tiers, but for blocks the cluster served.
   */
  readonly byTier: Record<TenantEvent, TenantCount>[];
}

/** What opening needs before the parts exist: the secret, the tenants' keys, the owners. */
export interface TenancySetup {
  readonly config: TenancyConfig;
  readonly owners: TenantOwners;
  readonly tenants: Tenant[];
  /** Writes a secret made at random into the file tier's directory (after the open). */
  readonly writeSecret: (() => Promise<void>) | undefined;
}

export async function prepareTenancy(
  config: TenancyConfig,
  options: WarehouseOptions,
): Promise<TenancySetup> {
  const file = options.tiers.find((t) => t.kind === 'file') as { dir?: string } | undefined;
  const { secret, write } = await loadSecret(config.secret, file?.dir);
  const tenants = config.tenants.map((c, i): Tenant => ({
    config: c,
    owner: i + 1,
    keys: new TenantKeys(secret, c.name),
    retention: c.ttlMs === undefined ? undefined : new RetentionList(c.ttlMs),
    written: zero(),
    read: zero(),
    evicted: zero(),
    expired: zero(),
    byTier: [],
  }));
  const tags = new Map<string, string>();
  for (const t of tenants) {
    const other = tags.get(t.keys.tag);
    if (other !== undefined) {
      // 1 in 2^32 per pair: a secret that makes two tenants' tags equal is refused, not shared.
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `tenants ${other} and ${t.config.name} derive the same key tag from this secret; rename one`,
      );
    }
    tags.set(t.keys.tag, t.config.name);
  }
  const owners = new TenantOwners(
    tenants.map((t) => ({ tag: t.keys.tag, quota: t.config.quota, pinned: t.config.pinned })),
    options.blockBytes,
  );
  return { config, owners, tenants, writeSecret: write };
}

export class Tenancy {
  readonly blockTokens: number;
  readonly owners: TenantOwners;
  private readonly byName = new Map<string, Tenant>();
  private readonly list: readonly Tenant[];
  readonly now: () => number;
  /** Keys being removed by their tenant's evict: not counted as evicted for space. */
  readonly explicit = new Set<Key>();
  /** Keys being removed by expiry: counted as expired, not as evicted. */
  private readonly expiring = new Set<Key>();
  /** Names of the tiers counted per tenant (local, then source tiers). */
  private readonly tierNames: string[];
  private sweeping: Promise<void> | undefined;
  private readonly timer: SweepTimer;
  private closed = false;

  constructor(
    private readonly parts: Parts,
    setup: TenancySetup,
  ) {
    this.blockTokens = setup.config.blockTokens;
    this.owners = setup.owners;
    this.list = setup.tenants;
    for (const t of this.list) this.byName.set(t.config.name, t);
    this.now = setup.config.now ?? parts.now;
    this.timer = new SweepTimer(this.now, () => void this.sweep().catch(() => undefined));
    this.tierNames = [
      ...parts.tiers.map((t) => t.name),
      ...parts.sources.tierStats().map((t) => t.name),
    ];
    for (const t of this.list) t.byTier.push(...this.tierNames.map(zeros));
    // Told by the BlockIndex itself, which alone knows the tier a block's last copy left from.
    this.owners.onLeft = (key, tier) => this.left(key, tier);
    // Blocks found on disk: their last use is unknown, so their time starts now.
    const now = this.now();
    for (const [key] of parts.index) this.tenantOf(key)?.retention?.use(key, now);
    this.arm();
  }

  names(): string[] {
    return this.list.map((t) => t.config.name);
  }

  get(name: unknown): Tenant {
    const t = typeof name === 'string' ? this.byName.get(name) : undefined;
    if (!t) {
      throw new KvtierError(
        'KVTIER_UNKNOWN_TENANT',
        `no tenant ${typeof name === 'string' ? JSON.stringify(name.slice(0, 64)) : typeof name} in this warehouse`,
      );
    }
    return t;
  }

  tenantOf(key: Key): Tenant | undefined {
    const o = this.owners.of(key);
    return o === 0 ? undefined : this.list[o - 1];
  }

  /**
   * `blocks` more of `event` for tenant `t` in `tier` (a local or source tier: counted there and
   * in the total; past them, the cluster: in the total only).
   */
  count(t: Tenant, event: TenantEvent, tier: number, blocks = 1): void {
    this.add(t[event], blocks);
    const at = t.byTier[tier];
    if (at) this.add(at[event], blocks);
  }

  /** Counts one block of `event` per key position, in the tier given for it (-1: none). */
  countAt(t: Tenant, event: TenantEvent, tiers: readonly number[]): void {
    for (const tier of tiers) if (tier >= 0) this.count(t, event, tier);
  }

  private add(c: TenantCount, blocks: number): void {
    c.blocks += blocks;
    c.bytes += blocks * this.parts.blockBytes;
    c.tokens += blocks * this.blockTokens;
  }

  /** The keys were put or hit: their time starts again. */
  used(t: Tenant, keys: readonly Key[]): void {
    if (!t.retention || keys.length === 0) return;
    const now = this.now();
    for (const k of keys) t.retention.use(k, now);
    this.arm();
  }

  /** Expires every block due by now; one sweep at a time (a second caller waits for it). */
  sweep(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.sweeping ??= this.parts.inflight.track(this.sweepNow()).finally(() => {
      this.sweeping = undefined;
      this.arm();
    });
    return this.sweeping;
  }

  /**
   * Expires what is due before an operation looks. A sweep that fails (a file tier that cannot
   * forget a block) fails no operation: the blocks stay due, and the next sweep tries again.
   */
  async fresh(): Promise<void> {
    if (this.due()) await this.sweep().catch(() => undefined);
  }

  /** Whether a sweep would find anything now (operations skip the await otherwise). */
  due(): boolean {
    const now = this.now();
    return this.list.some((t) => t.retention !== undefined && t.retention.nextDue() <= now);
  }

  stats(t: Tenant): TenantStats {
    const { index, tiers } = this.parts;
    const c = t.config;
    return {
      name: c.name,
      ...(c.retention !== undefined ? { retention: c.retention } : {}),
      ...(c.ttlMs !== undefined ? { ttlMs: c.ttlMs } : {}),
      tiers: this.tierNames.map((name, i) => {
        // A source tier (past the local ones) holds nothing of the tenant's here.
        const blocks = i < tiers.length ? index.usage(t.owner, i) : 0;
        const q = i < tiers.length ? this.owners.quota(t.owner, i) : Infinity;
        const c = t.byTier[i]!;
        return {
          name,
          blocks,
          usedBytes: blocks * this.owners.unitBytes(i),
          ...(q !== Infinity ? { quotaBytes: q * this.owners.unitBytes(i) } : {}),
          written: { ...c.written },
          read: { ...c.read },
          evicted: { ...c.evicted },
          expired: { ...c.expired },
        };
      }),
      written: { ...t.written },
      read: { ...t.read },
      evicted: { ...t.evicted },
      expired: { ...t.expired },
    };
  }

  allStats(): TenantStats[] {
    return this.list.map((t) => this.stats(t));
  }

  close(): void {
    this.closed = true;
    this.timer.stop();
    this.owners.onLeft = undefined;
  }

  private arm(): void {
    if (this.closed) return;
    let next = Infinity;
    for (const t of this.list) if (t.retention) next = Math.min(next, t.retention.nextDue());
    this.timer.arm(next);
  }

  /**
   * A block left the warehouse, its last copy from `tier`: out of its retention list, and counted
   * there as expired (a sweep's), not at all (its tenant's evict), or else as evicted for space.
   */
  private left(key: Key, tier: number): void {
    const t = this.tenantOf(key);
    if (!t) return;
    t.retention?.forget(key);
    if (this.expiring.has(key)) this.count(t, 'expired', tier);
    else if (!this.explicit.has(key)) this.count(t, 'evicted', tier);
  }

  private async sweepNow(): Promise<void> {
    const now = this.now();
    for (const t of this.list) {
      const due = t.retention?.due(now) ?? [];
      if (due.length === 0) continue;
      // Counted as expired by left(), in the tier each block's last copy left from.
      for (const k of due) this.expiring.add(k);
      let status;
      try {
        status = (await evictNow(this.parts, due)).status;
      } finally {
        for (const k of due) this.expiring.delete(k);
      }
      status.forEach((s, i) => {
        const key = due[i]!;
        // Held under a lease when its time came: kept, its time starts again.
        if (s === 'pinned') t.retention!.use(key, now);
        else t.retention!.forget(key);
      });
    }
  }
}
