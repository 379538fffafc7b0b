/**
 * The checks of `tenancy` (WarehouseOptions.tenancy): read once into plain objects, every tenant
 * name, quota tier and retention class resolved before anything is opened, so a bad configuration
 * leaves no store behind.
 */
import { KvtierError } from '../core/errors.js';
import {
  badArgument,
  finite,
  func,
  guard,
  instance,
  integer,
  options as readOptions,
  string,
} from '../core/validate.js';
import { MIN_SECRET_BYTES } from './tenant-keys.js';
import type { TenancyOptions, TenantOptions, TenantQuota, TierOptions } from './types.js';

const NAME = /^[A-Za-z0-9._-]{1,64}$/;

/** A tenant's configuration, checked. */
export interface TenantConfig {
  readonly name: string;
  readonly quota: Readonly<Record<string, TenantQuota>> | undefined;
  readonly retention: string | undefined;
  /** The class's time-to-live; undefined for none or 'pinned'. */
  readonly ttlMs: number | undefined;
  readonly pinned: boolean;
  readonly minPrefixTokens: number;
  readonly priority: number;
}

export interface TenancyConfig {
  readonly blockTokens: number;
  readonly tenants: readonly TenantConfig[];
  readonly secret: Uint8Array | undefined;
  readonly now: (() => number) | undefined;
}

/** The name a quota refers to a local tier by: its name, else its kind. */
function tierNames(tiers: readonly TierOptions[]): string[] {
  return tiers
    .filter((t) => t.kind === 'gpu' || t.kind === 'host' || t.kind === 'file')
    .map((t) => (t as { name?: string }).name ?? t.kind);
}

function checkQuota(
  given: unknown,
  name: string,
  tiers: readonly string[],
): Record<string, TenantQuota> {
  if (typeof given !== 'object' || given === null || Array.isArray(given)) {
    throw badArgument(name, 'an object of quotas by tier name', given);
  }
  const out: Record<string, TenantQuota> = {};
  for (const tier of guard(name, () => Object.keys(given))) {
    if (!tiers.includes(tier)) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `${name} names tier ${JSON.stringify(tier)}, which is not a local tier (${tiers.join(', ')})`,
      );
    }
    const q = readOptions<{ bytes?: unknown; share?: unknown }>(
      guard(name, () => (given as Record<string, unknown>)[tier]),
      `${name}.${tier}`,
      ['bytes', 'share'],
    );
    if ((q.bytes === undefined) === (q.share === undefined)) {
      throw badArgument(`${name}.${tier}`, '{ bytes } or { share }', q);
    }
    if (q.bytes !== undefined) {
      out[tier] = { bytes: integer(q.bytes, `${name}.${tier}.bytes`, { min: 0 }) };
    } else {
      const share = finite(q.share, `${name}.${tier}.share`);
      if (!(share > 0 && share <= 1))
        throw badArgument(`${name}.${tier}.share`, 'in (0, 1]', share);
      out[tier] = { share };
    }
  }
  return out;
}

function checkClasses(given: unknown): Map<string, number | 'pinned'> {
  const classes = new Map<string, number | 'pinned'>();
  if (given === undefined) return classes;
  if (typeof given !== 'object' || given === null || Array.isArray(given)) {
    throw badArgument('tenancy.retentionClasses', 'an object of classes by name', given);
  }
  for (const name of guard('tenancy.retentionClasses', () => Object.keys(given))) {
    const v = guard('tenancy.retentionClasses', () => (given as Record<string, unknown>)[name]);
    if (v !== 'pinned' && !(typeof v === 'number' && v > 0 && Number.isFinite(v))) {
      throw badArgument(`tenancy.retentionClasses.${name}`, "a time-to-live in ms or 'pinned'", v);
    }
    classes.set(name, v);
  }
  return classes;
}

function checkTenant(
  given: unknown,
  at: string,
  classes: ReadonlyMap<string, number | 'pinned'>,
  tiers: readonly string[],
): TenantConfig {
  if (given === undefined) throw badArgument(at, 'a tenant', given);
  const t = readOptions<Record<keyof TenantOptions, unknown>>(given, at, [
    'name',
    'quota',
    'retention',
    'minPrefixTokens',
    'priority',
  ]);
  const name = string(t.name, `${at}.name`);
  if (!NAME.test(name)) throw badArgument(`${at}.name`, '1 to 64 of [A-Za-z0-9._-]', name);
  const quota = t.quota === undefined ? undefined : checkQuota(t.quota, `${at}.quota`, tiers);
  let retention: string | undefined;
  let cls: number | 'pinned' | undefined;
  if (t.retention !== undefined) {
    retention = string(t.retention, `${at}.retention`);
    cls = classes.get(retention);
    if (cls === undefined) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `${at}.retention: no retention class ${JSON.stringify(retention)} is configured (tenancy.retentionClasses: ${[...classes.keys()].join(', ') || 'none'})`,
      );
    }
  }
  return {
    name,
    quota,
    retention,
    ttlMs: typeof cls === 'number' ? cls : undefined,
    pinned: cls === 'pinned',
    minPrefixTokens:
      t.minPrefixTokens === undefined
        ? 0
        : integer(t.minPrefixTokens, `${at}.minPrefixTokens`, { min: 0 }),
    priority: t.priority === undefined ? 0 : finite(t.priority, `${at}.priority`),
  };
}

/** Checks `tenancy` against the warehouse's tiers. */
export function checkTenancy(given: unknown, tiers: readonly TierOptions[]): TenancyConfig {
  const o = readOptions<Record<keyof TenancyOptions, unknown>>(given, 'tenancy', [
    'blockTokens',
    'retentionClasses',
    'tenants',
    'secret',
    'now',
  ]);
  if (given === undefined) throw badArgument('tenancy', 'an object', given);
  const blockTokens = integer(o.blockTokens, 'tenancy.blockTokens', { min: 1 });
  const classes = checkClasses(o.retentionClasses);
  if (!guard('tenancy.tenants', () => Array.isArray(o.tenants))) {
    throw badArgument('tenancy.tenants', 'an array of tenants', o.tenants);
  }
  const names = tierNames(tiers);
  const tenants = guard('tenancy.tenants', () =>
    Array.from(o.tenants as unknown[], (t, i) =>
      checkTenant(t, `tenancy.tenants[${i}]`, classes, names),
    ),
  );
  const seen = new Set<string>();
  for (const t of tenants) {
    if (seen.has(t.name)) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `tenant ${JSON.stringify(t.name)} is named twice`,
      );
    }
    seen.add(t.name);
  }
  let secret: Uint8Array | undefined;
  if (o.secret !== undefined) {
    secret = instance(o.secret, 'tenancy.secret', Uint8Array, 'a Buffer');
    if (secret.length < MIN_SECRET_BYTES) {
      throw badArgument(
        'tenancy.secret',
        `at least ${MIN_SECRET_BYTES} bytes`,
        `${secret.length} bytes`,
      );
    }
  }
  const now = o.now === undefined ? undefined : func<() => number>(o.now, 'tenancy.now');
  return { blockTokens, tenants, secret, now };
}
