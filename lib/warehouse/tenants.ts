/**
 * Tenancy: the tenants of one warehouse (docs/tenants.md, "The model"). It holds each tenant's
 * keys (tenant-keys.ts), quotas (tenant-quotas.ts, inside the BlockIndex), retention list
 * (tenant-retention.ts) and counters, follows the change feed to count evictions, expires blocks
 * whose time-to-live ran out, and reports stats. TenantView (tenant-view.ts) is what a tenant's
 * caller holds.
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
  /** Keys being removed by expiry or their tenant's evict: not counted as evicted for space. */
  readonly explicit = new Set<Key>();
  private sweeping: Promise<void> | undefined;
  private readonly timer: SweepTimer;
  private closed = false;
  private readonly unwatch: () => void;

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
    this.unwatch = parts.feed.watch((_added, removed) => this.left(removed));
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

  count(c: TenantCount, blocks: number): void {
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

  /** Whether a sweep would find anything now (operations skip the await otherwise). */
  due(): boolean {
    const now = this.now();
    return this.list.some((t) => t.retention !== undefined && t.retention.nextDue() <= now);
  }

  stats(t: Tenant): TenantStats {
    const { index, tiers, blockBytes } = this.parts;
    const c = t.config;
    return {
      name: c.name,
      ...(c.retention !== undefined ? { retention: c.retention } : {}),
      ...(c.ttlMs !== undefined ? { ttlMs: c.ttlMs } : {}),
      tiers: tiers.map((tier, i) => {
        const blocks = index.usage(t.owner, i);
        const q = this.owners.quota(t.owner, i);
        return {
          name: tier.name,
          blocks,
          usedBytes: blocks * blockBytes,
          ...(q !== Infinity ? { quotaBytes: q * blockBytes } : {}),
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
    this.unwatch();
  }

  private arm(): void {
    if (this.closed) return;
    let next = Infinity;
    for (const t of this.list) if (t.retention) next = Math.min(next, t.retention.nextDue());
    this.timer.arm(next);
  }

  /** Blocks that left the warehouse: out of their lists, and counted unless expiry or an evict. */
  private left(removed: readonly Key[]): void {
    for (const key of removed) {
      const t = this.tenantOf(key);
      if (!t) continue;
      t.retention?.forget(key);
      if (!this.explicit.has(key)) this.count(t.evicted, 1);
    }
  }

  private async sweepNow(): Promise<void> {
    const now = this.now();
    for (const t of this.list) {
      const due = t.retention?.due(now) ?? [];
      if (due.length === 0) continue;
      for (const k of due) this.explicit.add(k);
      let status;
      try {
        status = (await evictNow(this.parts, due)).status;
      } finally {
        for (const k of due) this.explicit.delete(k);
      }
      let expired = 0;
      status.forEach((s, i) => {
        const key = due[i]!;
        if (s === 'removed') expired++;
        // Held under a lease when its time came: kept, its time starts again.
        if (s === 'pinned') t.retention!.use(key, now);
        else t.retention!.forget(key);
      });
      this.count(t.expired, expired);
    }
  }
}
