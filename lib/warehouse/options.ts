/**
 * The Warehouse's argument checks: each public method reads its options here once, into a plain
 * object of the right types, before it touches any state.
 */
import { checkEngineOptions } from '../core/engine.js';
import { KvtierError } from '../core/errors.js';
import { DeviceRegion } from '../core/gpu/device-region.js';
import {
  badArgument,
  boolean,
  finite,
  func,
  guard,
  instance,
  integer,
  oneOf,
  options as readOptions,
  signal,
  string,
} from '../core/validate.js';
import { checkCallOptions } from './calls.js';
import type {
  GetOptions,
  LookupOptions,
  PredictivePrefetchOptions,
  PrefetchOptions,
  PutOptions,
  TierOptions,
  WarehouseOptions,
} from './types.js';
import { sourceKind } from './sources.js';
import { checkCodecOption } from './tier-codec.js';

const TIER_FIELDS = [
  'kind',
  'name',
  'bytes',
  'device',
  'region',
  'layout',
  'blocks',
  'dir',
  'codec',
] as const;

/** The fields of CallOptions (calls.ts), accepted by put, get, lookup and prefetch. */
const CALL_FIELDS = ['session', 'hint', 'request'] as const;

const LOCAL_KINDS: readonly unknown[] = ['gpu', 'host', 'file'];

function optional<T>(value: T | undefined, check: (v: T) => unknown): void {
  if (value !== undefined) check(value);
}

function checkTier(given: unknown, name: string): TierOptions {
  if (given === undefined) throw badArgument(name, 'a tier description', given);
  if (typeof given === 'object' && given !== null) {
    const kind = guard(`${name}.kind`, (): unknown => (given as Record<string, unknown>).kind);
    // Kinds past the local ones are block sources their own layer registered (a peer).
    if (!LOCAL_KINDS.includes(kind)) return sourceKind(kind, `${name}.kind`).check(given, name);
  }
  const t = readOptions<Record<(typeof TIER_FIELDS)[number], unknown>>(given, name, TIER_FIELDS);
  const kind = oneOf(t.kind, `${name}.kind`, ['gpu', 'host', 'file'] as const);
  optional(t.name, (v) => string(v, `${name}.name`));
  optional(t.bytes, (v) => integer(v, `${name}.bytes`, { min: 1 }));
  if (kind === 'gpu') {
    optional(t.device, (v) => integer(v, `${name}.device`));
    optional(t.region, (v) => instance(v, `${name}.region`, DeviceRegion, 'a DeviceRegion'));
    optional(t.layout, (v) => {
      if (typeof v !== 'object' || v === null) throw badArgument(`${name}.layout`, 'a KvLayout', v);
    });
    optional(t.blocks, (v) => {
      if (!guard(`${name}.blocks`, () => Array.isArray(v))) {
        throw badArgument(`${name}.blocks`, 'an array of block indices', v);
      }
      t.blocks = guard(`${name}.blocks`, () =>
        Array.from(v as unknown[], (b, i) => integer(b, `${name}.blocks[${i}]`)),
      );
    });
  }
  if (kind === 'file') string(t.dir, `${name}.dir`);
  if (t.codec !== undefined) {
    // Blocks in GPU and host memory are the engine's, read and written in place: full precision.
    if (kind !== 'file') {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `${name}.codec: only a file tier stores blocks encoded; ${kind} tiers keep them at full precision`,
      );
    }
    t.codec = checkCodecOption(t.codec, `${name}.codec`);
  }
  return t as unknown as TierOptions;
}

/** Reads and checks the options of Warehouse.open (deeper checks follow there). */
export function checkWarehouseOptions(given: unknown): WarehouseOptions {
  if (given === undefined) throw badArgument('options', 'an object', given);
  const o = readOptions<WarehouseOptions>(given, 'options', [
    'blockBytes',
    'tiers',
    'policy',
    'durability',
    'writeThrough',
    'promote',
    'engine',
    'prefetchBytes',
    'predictivePrefetch',
    'now',
    'tenancy',
  ]);
  integer(o.blockBytes, 'blockBytes', { min: 1 });
  if (!guard('tiers', () => Array.isArray(o.tiers))) {
    throw badArgument('tiers', 'an array of tier descriptions', o.tiers);
  }
  o.tiers = guard('tiers', () =>
    Array.from(o.tiers as unknown[], (t, i) => checkTier(t, `tiers[${i}]`)),
  );
  optional(o.policy, (v) => {
    if (typeof v !== 'string' && typeof v !== 'function') {
      throw badArgument('policy', 'a policy name or a factory', v);
    }
  });
  optional(o.durability, (v) => oneOf(v, 'durability', ['none', 'sync'] as const));
  optional(o.writeThrough, (v) => boolean(v, 'writeThrough'));
  optional(o.promote, (v) => boolean(v, 'promote'));
  if (o.engine !== undefined) o.engine = checkEngineOptions(o.engine, 'engine');
  optional(o.prefetchBytes, (v) => integer(v, 'prefetchBytes', { min: 1 }));
  if (o.predictivePrefetch !== undefined) {
    o.predictivePrefetch = checkPredictivePrefetch(o.predictivePrefetch);
  }
  optional(o.now, (v) => func(v, 'now'));
  // tenancy is checked by tenant-options.ts (Warehouse.open), against these tiers.
  return o as WarehouseOptions;
}

function checkPredictivePrefetch(given: unknown): PredictivePrefetchOptions {
  const name = 'predictivePrefetch';
  const o = readOptions<PredictivePrefetchOptions>(given, name, ['bytesPerSecond', 'intervalMs']);
  if (typeof o.bytesPerSecond !== 'number' || !(o.bytesPerSecond > 0)) {
    throw badArgument(`${name}.bytesPerSecond`, 'a positive number of bytes', o.bytesPerSecond);
  }
  finite(o.bytesPerSecond, `${name}.bytesPerSecond`);
  // A timer's delay is at most 2^31 - 1 ms (about 24.8 days).
  optional(o.intervalMs, (v) => integer(v, `${name}.intervalMs`, { min: 1, max: 2 ** 31 - 1 }));
  return { ...o } as PredictivePrefetchOptions;
}

export function checkPutOptions(given: unknown): PutOptions {
  const o = readOptions<PutOptions>(given, 'options', ['priority', 'writeThrough', ...CALL_FIELDS]);
  optional(o.priority, (v) => finite(v, 'options.priority'));
  optional(o.writeThrough, (v) => boolean(v, 'options.writeThrough'));
  return checkCallOptions(o);
}

export function checkGetOptions(given: unknown): GetOptions {
  const o = readOptions<GetOptions>(given, 'options', [
    'signal',
    'promote',
    'remote',
    ...CALL_FIELDS,
  ]);
  signal(o.signal, 'options.signal');
  optional(o.promote, (v) => boolean(v, 'options.promote'));
  optional(o.remote, (v) => boolean(v, 'options.remote'));
  return checkCallOptions(o);
}

export function checkLookupOptions(given: unknown): LookupOptions {
  return checkCallOptions(readOptions<LookupOptions>(given, 'options', CALL_FIELDS));
}

export function checkPrefetchOptions(given: unknown): PrefetchOptions {
  const o = readOptions<PrefetchOptions>(given, 'options', [
    'to',
    'priority',
    'signal',
    'deadline',
    ...CALL_FIELDS,
  ]);
  optional(o.to, (v) => {
    if (typeof v !== 'number' && typeof v !== 'string') {
      throw badArgument('options.to', 'a tier index or name', v);
    }
  });
  optional(o.priority, (v) => finite(v, 'options.priority'));
  signal(o.signal, 'options.signal');
  optional(o.deadline, (v) => finite(v, 'options.deadline'));
  return checkCallOptions(o);
}

export function checkPinOptions(given: unknown, maxTtlMs: number): { ttlMs?: number } {
  const o = readOptions<{ ttlMs?: number }>(given, 'options', ['ttlMs']);
  optional(o.ttlMs, (v) => {
    if (typeof v !== 'number' || !(v > 0) || v > maxTtlMs) {
      throw badArgument('ttlMs', `a positive number of at most ${maxTtlMs} (about 24.8 days)`, v);
    }
  });
  return o;
}

/** The id of a lease given back to unpin(). */
export function leaseId(lease: unknown): number {
  if (typeof lease !== 'object' || lease === null) throw badArgument('lease', 'a Lease', lease);
  return guard('lease', () => (lease as { id: unknown }).id) as number;
}
