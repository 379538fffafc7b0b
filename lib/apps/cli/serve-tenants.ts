/**
 * `kvtier serve --tenants FILE`: the tenants config (docs/tenants.md, "Serving tenants"). JSON,
 * because an operator's tooling writes it as readily as a person does, the parser is the
 * runtime's own (no dependency, no YAML ambiguities), and strictness is easy to state: every field
 * is named below, and anything else is an error at start, before anything is served.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

import { parseSize } from '../sizes.js';
import { KvtierError } from '../../index.js';
import {
  checkSecret,
  type PeerStore,
  readTokenFile,
  type Secret,
  type ServerTenancy,
  TENANT_NAME,
} from '../../internal.js';

/** What the Warehouse's `tenancy` option takes (tenant-contract: TenancyOptions). */
export interface TenancyConfig {
  blockTokens: number;
  retentionClasses?: Record<string, number | 'pinned'>;
  tenants: {
    name: string;
    quota?: Record<string, { bytes: number } | { share: number }>;
    retention?: string;
    minPrefixTokens?: number;
    priority?: number;
  }[];
}

export interface ServeTenants {
  /** The warehouse's `tenancy` option. */
  tenancy: TenancyConfig;
  /** Each tenant's token, by name. */
  tokens: Map<string, Secret>;
  /** The operator's token: reads every tenant's statistics, reads and writes no blocks. */
  operator: Secret;
}

/** What serve needs of a Warehouse opened with `tenancy` (tenant-contract). */
export interface TenantWarehouse {
  tenant(name: string): PeerStore;
  stats(): { tenants?: unknown[] };
}

/**
 * The peer server's tenancy: tokens from the config, each tenant's view from the warehouse, and
 * the operator's STATS answered with the warehouse's per-tenant statistics.
 */
export function serverTenancy(
  t: ServeTenants,
  warehouse: TenantWarehouse,
  wrap: (view: PeerStore) => PeerStore = (v) => v,
): ServerTenancy {
  return {
    tokens: t.tokens,
    view: (name) => wrap(warehouse.tenant(name)),
    stats: () => ({ tenants: warehouse.stats().tenants ?? [] }),
  };
}

/** --engine-tenant names a tenant of the config, and goes with --tenants only. */
export function checkEngineTenant(
  engineTenant: string | undefined,
  t: ServeTenants | undefined,
): void {
  if (engineTenant === undefined) return;
  if (!t) throw bad('--engine-tenant goes with --tenants');
  if (!t.tokens.has(engineTenant)) {
    throw bad(`--engine-tenant ${engineTenant}: no such tenant in the tenants config`);
  }
}

/** Options that cannot go with --tenants, and why (docs/tenants.md). */
export function checkTenantsCombination(opts: {
  tokenFile?: string | undefined;
  engineSocket?: string | undefined;
  engineTenant?: string | undefined;
  redis?: string | undefined;
}): void {
  if (opts.tokenFile !== undefined) {
    throw bad('--tenants takes the operator token from the tenants config, not --token-file');
  }
  if (opts.engineSocket !== undefined && opts.engineTenant === undefined) {
    throw bad(
      '--tenants with --engine-socket needs --engine-tenant NAME: the engine channel has no handshake that names a tenant, so the socket acts as one tenant (guarded by its file permissions)',
    );
  }
  if (opts.redis !== undefined) {
    throw bad('--tenants with --redis: cluster nodes fetch for each other outside any tenant');
  }
}

const bad = (message: string): KvtierError => new KvtierError('KVTIER_BAD_ARGUMENT', message);

type Json = Record<string, unknown>;

function object(v: unknown, where: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(`${where}: not an object`);
  return v as Json;
}

/** Refuses a field the config does not define: a misspelt quota must not silently be no quota. */
function only(o: Json, fields: readonly string[], where: string): void {
  for (const k of Object.keys(o)) {
    if (!fields.includes(k))
      throw bad(`${where}: unknown field '${k}' (known: ${fields.join(', ')})`);
  }
}

function whole(v: unknown, where: string, min: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw bad(`${where} must be an integer of at least ${min}`);
  }
  return v;
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A time-to-live: milliseconds, or '5m', '1h', '30s', '7d'; or 'pinned'. */
function ttl(v: unknown, where: string): number | 'pinned' {
  if (v === 'pinned') return v;
  if (typeof v === 'number') return whole(v, where, 1);
  const m = typeof v === 'string' ? /^(\d+)(ms|s|m|h|d)$/.exec(v) : null;
  if (!m) throw bad(`${where} must be milliseconds, a duration like '5m' or '1h', or 'pinned'`);
  return whole(Number(m[1]) * UNITS[m[2]!]!, where, 1);
}

async function token(o: Json, where: string, base: string): Promise<Secret> {
  if ((o.token === undefined) === (o.tokenFile === undefined)) {
    throw bad(`${where} needs exactly one of token and tokenFile`);
  }
  if (o.token !== undefined) {
    if (typeof o.token !== 'string') throw bad(`${where}.token must be a string`);
    return checkSecret(o.token, `${where}.token`);
  }
  if (typeof o.tokenFile !== 'string') throw bad(`${where}.tokenFile must be a path`);
  return readTokenFile(resolve(base, o.tokenFile));
}

function quota(
  v: unknown,
  where: string,
  tiers: readonly string[],
): TenancyConfig['tenants'][0]['quota'] {
  const o = object(v, where);
  const out: NonNullable<TenancyConfig['tenants'][0]['quota']> = {};
  for (const [tier, q] of Object.entries(o)) {
    if (!tiers.includes(tier)) {
      throw bad(`${where}: no tier '${tier}' on this server (its tiers: ${tiers.join(', ')})`);
    }
    const e = object(q, `${where}.${tier}`);
    only(e, ['bytes', 'share'], `${where}.${tier}`);
    if ((e.bytes === undefined) === (e.share === undefined)) {
      throw bad(`${where}.${tier} needs exactly one of bytes and share`);
    }
    if (e.share !== undefined) {
      const s = e.share;
      if (typeof s !== 'number' || !(s > 0 && s <= 1)) {
        throw bad(`${where}.${tier}.share must be a number above 0 and at most 1`);
      }
      out[tier] = { share: s };
    } else {
      if (typeof e.bytes !== 'number' && typeof e.bytes !== 'string') {
        throw bad(`${where}.${tier}.bytes must be a size, like 1073741824 or '1GiB'`);
      }
      out[tier] = { bytes: parseSize(e.bytes, `${where}.${tier}.bytes`) };
    }
  }
  return out;
}

/**
 * Reads and checks a tenants config. `tiers` names the server's tiers (quotas name them). Any
 * fault is a KVTIER_BAD_ARGUMENT naming where it is: unknown fields, a retention class not
 * configured, a token shorter than 16 bytes, two tenants (or a tenant and the operator) with
 * one token, two tenants of one name.
 */
export async function readTenantsConfig(
  path: string,
  tiers: readonly string[],
): Promise<ServeTenants> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `cannot read the tenants config ${path}`, {
      cause: e,
    });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `${path} is not JSON: ${(e as Error).message}`, {
      cause: e,
    });
  }
  const base = dirname(resolve(path));
  const top = object(doc, path);
  only(
    top,
    ['blockTokens', 'retentionClasses', 'operatorToken', 'operatorTokenFile', 'tenants'],
    path,
  );
  const blockTokens = whole(top.blockTokens, `${path}: blockTokens (tokens per block)`, 1);
  const classes: Record<string, number | 'pinned'> = {};
  if (top.retentionClasses !== undefined) {
    for (const [name, v] of Object.entries(
      object(top.retentionClasses, `${path}: retentionClasses`),
    )) {
      classes[name] = ttl(v, `${path}: retentionClasses.${name}`);
    }
  }
  const operator = await token(
    { token: top.operatorToken, tokenFile: top.operatorTokenFile },
    `${path}: operator`,
    base,
  );
  if (!Array.isArray(top.tenants) || top.tenants.length === 0) {
    throw bad(`${path}: tenants must be a non-empty list`);
  }
  const tokens = new Map<string, Secret>();
  const owners: [string, Secret][] = [['the operator', operator]];
  const tenants: TenancyConfig['tenants'] = [];
  for (const [i, t] of (top.tenants as unknown[]).entries()) {
    const where = `${path}: tenants[${i}]`;
    const o = object(t, where);
    only(
      o,
      ['name', 'token', 'tokenFile', 'quota', 'retention', 'minPrefixTokens', 'priority'],
      where,
    );
    if (typeof o.name !== 'string' || !TENANT_NAME.test(o.name)) {
      throw bad(`${where}.name must be 1 to 64 of A-Z a-z 0-9 . _ -`);
    }
    const name = o.name;
    if (tokens.has(name)) throw bad(`${where}: a second tenant named '${name}'`);
    const secret = await token(o, `${where} (${name})`, base);
    const twin = owners.find(([, s]) => s.equals(secret));
    if (twin) {
      throw bad(
        `${path}: tenant '${name}' has the same token as ${twin[0] === 'the operator' ? twin[0] : `tenant '${twin[0]}'`}; each needs its own`,
      );
    }
    owners.push([name, secret]);
    tokens.set(name, secret);
    const entry: TenancyConfig['tenants'][0] = { name };
    if (o.quota !== undefined) entry.quota = quota(o.quota, `${where}.quota`, tiers);
    if (o.retention !== undefined) {
      if (typeof o.retention !== 'string' || !Object.hasOwn(classes, o.retention)) {
        const known = Object.keys(classes);
        throw bad(
          `${where}: retention class ${JSON.stringify(o.retention)} is not configured (retentionClasses: ${known.length > 0 ? known.join(', ') : 'none'})`,
        );
      }
      entry.retention = o.retention;
    }
    if (o.minPrefixTokens !== undefined) {
      entry.minPrefixTokens = whole(o.minPrefixTokens, `${where}.minPrefixTokens`, 0);
    }
    if (o.priority !== undefined) {
      if (typeof o.priority !== 'number' || !Number.isFinite(o.priority)) {
        throw bad(`${where}.priority must be a number`);
      }
      entry.priority = o.priority;
    }
    tenants.push(entry);
  }
  const tenancy: TenancyConfig = {
    blockTokens,
    ...(Object.keys(classes).length > 0 ? { retentionClasses: classes } : {}),
    tenants,
  };
  return { tenancy, tokens, operator };
}
