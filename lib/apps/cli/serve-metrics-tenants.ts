/**
 * `kvtier serve --tenants ... --metrics`: the per-tenant series (docs/metrics.md, Tenants), read
 * at scrape time from `warehouse.stats().tenants`, like the rest of serve's metrics.
 */
import { Counter, Gauge, type Registry } from 'prom-client';

/** What the metrics read of one tenant's statistics (tenant-contract: TenantStats). */
export interface TenantFigures extends Events {
  name: string;
  tiers: (Events & { name: string; blocks: number; usedBytes: number; quotaBytes?: number })[];
}

interface Events {
  written: Moved;
  read: Moved;
  evicted: Moved;
  expired: Moved;
}

interface Moved {
  blocks: number;
  bytes: number;
  tokens: number;
}

const EVENTS = ['written', 'read', 'evicted', 'expired'] as const;

export function registerTenantMetrics(
  registry: Registry,
  read: () => readonly TenantFigures[],
): void {
  const counter = (unit: keyof Moved, help: string): void => {
    new Counter({
      name: `kvtier_tenant_${unit}_total`,
      help,
      labelNames: ['tenant', 'event'],
      registers: [registry],
      collect() {
        this.reset();
        for (const t of read()) {
          for (const event of EVENTS) this.inc({ tenant: t.name, event }, t[event][unit]);
        }
      },
    });
  };
  counter(
    'blocks',
    'Blocks of a tenant by event: written (cache writes), read (hits), evicted (for space), expired (retention ran out)',
  );
  counter('bytes', 'Bytes of a tenant by event (as kvtier_tenant_blocks_total)');
  counter(
    'tokens',
    'Tokens of a tenant by event, blocks times the config blockTokens: the unit providers bill in',
  );
  // The same per tier: summed over `tier`, each is the series above (but for cluster reads).
  const perTier = (unit: keyof Moved, help: string): void => {
    new Counter({
      name: `kvtier_tenant_tier_event_${unit}_total`,
      help,
      labelNames: ['tenant', 'tier', 'event'],
      registers: [registry],
      collect() {
        this.reset();
        for (const t of read()) {
          for (const tier of t.tiers) {
            for (const event of EVENTS) {
              this.inc({ tenant: t.name, tier: tier.name, event }, tier[event][unit]);
            }
          }
        }
      },
    });
  };
  perTier(
    'blocks',
    'Blocks of a tenant by tier and event: written (the tier a put stored into), read (the tier a hit was served from), evicted and expired (the tier the last copy left from)',
  );
  perTier(
    'bytes',
    'Bytes of a tenant by tier and event (as kvtier_tenant_tier_event_blocks_total)',
  );
  perTier(
    'tokens',
    'Tokens of a tenant by tier and event (as kvtier_tenant_tier_event_blocks_total)',
  );
  const gauge = (
    name: string,
    help: string,
    value: (t: TenantFigures['tiers'][0]) => number | undefined,
  ): void => {
    new Gauge({
      name,
      help,
      labelNames: ['tenant', 'tier'],
      registers: [registry],
      collect() {
        this.reset();
        for (const t of read()) {
          for (const tier of t.tiers) {
            const v = value(tier);
            if (v !== undefined) this.set({ tenant: t.name, tier: tier.name }, v);
          }
        }
      },
    });
  };
  gauge('kvtier_tenant_tier_blocks', 'Blocks of a tenant in a tier', (t) => t.blocks);
  gauge('kvtier_tenant_tier_used_bytes', 'Bytes a tenant holds in a tier', (t) => t.usedBytes);
  gauge(
    'kvtier_tenant_tier_quota_bytes',
    "A tenant's quota in a tier, in bytes (absent: no quota there)",
    (t) => t.quotaBytes,
  );
}
