/**
 * The per-tier tenant figures as `serve --metrics` and `kvtier tenants` show them, from statistics
 * of two tiers whose counters differ, so a tier's series cannot pass for the tenant's total.
 */
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';

import { formatTenants } from '../../lib/apps/cli/tenants.js';
import {
  registerTenantMetrics,
  type TenantFigures,
} from '../../lib/apps/cli/serve-metrics-tenants.js';

const moved = (blocks: number) => ({ blocks, bytes: blocks * 4096, tokens: blocks * 16 });

const acme: TenantFigures & { retention: string } = {
  name: 'acme',
  retention: '1h',
  tiers: [
    {
      name: 'host',
      blocks: 4,
      usedBytes: 4 * 4096,
      quotaBytes: 8 * 4096,
      written: moved(10),
      read: moved(6),
      evicted: moved(0),
      expired: moved(1),
    },
    {
      name: 'file',
      blocks: 5,
      usedBytes: 5 * 4096,
      written: moved(2),
      read: moved(3),
      evicted: moved(4),
      expired: moved(2),
    },
  ],
  written: moved(12),
  read: moved(9),
  evicted: moved(4),
  expired: moved(3),
};

describe('tenant figures per tier', () => {
  it('serve --metrics: one series per tenant, tier and event, summing to the totals', async () => {
    const registry = new Registry();
    registerTenantMetrics(registry, () => [acme]);
    const metrics = await registry.getMetricsAsJSON();
    const values = (name: string) => metrics.find((m) => m.name === name)!.values;
    for (const unit of ['blocks', 'bytes', 'tokens'] as const) {
      const perTier = values(`kvtier_tenant_tier_event_${unit}_total`);
      const totals = values(`kvtier_tenant_${unit}_total`);
      for (const event of ['written', 'read', 'evicted', 'expired'] as const) {
        for (const tier of acme.tiers) {
          const v = perTier.find(
            (s) =>
              s.labels.tenant === 'acme' && s.labels.tier === tier.name && s.labels.event === event,
          );
          expect(v?.value, `${unit} ${tier.name} ${event}`).toBe(tier[event][unit]);
        }
        const sum = perTier
          .filter((s) => s.labels.event === event)
          .reduce((n, s) => n + s.value, 0);
        expect(sum).toBe(totals.find((s) => s.labels.event === event)!.value);
        expect(sum).toBe(acme[event][unit]);
      }
    }
  });

  it('kvtier tenants: a line per tier with its counters, then the totals', () => {
    const lines = formatTenants([acme]).split('\n');
    expect(lines).toHaveLength(4);
    const cells = lines.map((l) => l.trim().split(/\s+/));
    expect(cells[1]).toEqual(['acme', '1h', 'host', '4', '16KiB', '32KiB', '160', '96', '0', '16']);
    expect(cells[2]).toEqual(['file', '5', '20KiB', '-', '32', '48', '64', '32']);
    expect(cells[3]).toEqual(['total', '9', '36KiB', '-', '192', '144', '64', '48']);
  });
});
