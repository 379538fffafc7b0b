/**
 * `kvtier tenants --connect HOST:PORT --token-file OPERATOR_TOKEN [--json]`: the per-tenant table
 * of a running `kvtier serve --tenants` (the protocol's STATS, which only the operator's token may
 * ask for; a tenant's token gets KVTIER_AUTH).
 */
import type { Command } from 'commander';

import { formatSize } from '../sizes.js';
import { KvtierError } from '../../index.js';
import { tenantStats } from '../../internal.js';
import type { TenantFigures } from './serve-metrics-tenants.js';

interface TenantsOptions {
  connect: string;
  tokenFile: string;
  json?: boolean;
}

type Row = TenantFigures & { retention?: string; ttlMs?: number };

function rowsOf(answer: unknown): Row[] {
  const tenants = (answer as { tenants?: unknown } | null)?.tenants;
  if (!Array.isArray(tenants)) {
    throw new KvtierError('KVTIER_PROTOCOL', 'the server answered STATS without a tenants list');
  }
  return tenants as Row[];
}

/**
 * One line per tenant and tier with that tier's counters (docs/tenants.md, "Accounting"), then a
 * "total" line with the tenant's totals, the sums over its tiers.
 */
export function formatTenants(rows: readonly Row[]): string {
  const head = [
    'tenant',
    'retention',
    'tier',
    'blocks',
    'used',
    'quota',
    'written tok',
    'read tok',
    'evicted tok',
    'expired tok',
  ];
  const lines: string[][] = [head];
  const counters = (c: Pick<Row, 'written' | 'read' | 'evicted' | 'expired'>): string[] =>
    [c.written, c.read, c.evicted, c.expired].map((m) => String(m.tokens));
  for (const t of rows) {
    t.tiers.forEach((tier, i) => {
      lines.push([
        i === 0 ? t.name : '',
        i === 0 ? (t.retention ?? '-') : '',
        tier.name,
        String(tier.blocks),
        formatSize(tier.usedBytes),
        tier.quotaBytes !== undefined ? formatSize(tier.quotaBytes) : '-',
        ...counters(tier),
      ]);
    });
    const blocks = t.tiers.reduce((n, tier) => n + tier.blocks, 0);
    const used = t.tiers.reduce((n, tier) => n + tier.usedBytes, 0);
    lines.push([
      t.tiers.length === 0 ? t.name : '',
      t.tiers.length === 0 ? (t.retention ?? '-') : '',
      'total',
      String(blocks),
      formatSize(used),
      '-',
      ...counters(t),
    ]);
  }
  const widths = head.map((_, c) => Math.max(...lines.map((l) => l[c]!.length)));
  return lines
    .map((l) =>
      l
        .map((cell, c) => cell.padEnd(widths[c]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export async function tenants(opts: TenantsOptions): Promise<void> {
  const rows = rowsOf(await tenantStats(opts.connect, { tokenFile: opts.tokenFile }));
  process.stdout.write(
    opts.json ? `${JSON.stringify({ tenants: rows }, null, 2)}\n` : `${formatTenants(rows)}\n`,
  );
}

export function registerTenants(program: Command): void {
  program
    .command('tenants')
    .description(
      "print each tenant's blocks, quota and billed tokens from a running `serve --tenants`",
    )
    .requiredOption('--connect <host:port>', 'the server')
    .requiredOption('--token-file <file>', "file holding the operator's token")
    .option('--json', 'print the statistics as JSON')
    .action(async (opts: TenantsOptions) => {
      await tenants(opts);
    });
}
