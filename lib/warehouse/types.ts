/**
 * The Warehouse's public types: its options, results, statistics and the interfaces it offers to
 * layers above (block sources, the change feed, the host-slot protocol). Types only, so every
 * module of the warehouse and every caller can import them without a cycle.
 */
import type { EngineOptions, Target } from '../core/engine.js';
import type { KvtierError } from '../core/errors.js';
import type { DeviceRegion } from '../core/gpu/device-region.js';
import type { KvLayout } from '../layout/kv-layout.js';
import type { Key } from '../keys/keys.js';
import type { PolicyFactory } from '../policy/policy.js';
import type { Durability } from './file-tier.js';
import type { TierKind } from './tier.js';
import type { FileTierCodecOptions } from './tier-codec.js';
import type { CallOptions } from './calls.js';

export type { CallId, CallOptions, Hint } from './calls.js';

/**
 * GPU memory above the host tier: `bytes` of a pool kvtier allocates on `device`, or `region`, GPU
 * memory the caller owns (allocated, wrapped, or imported by CUDA IPC from an inference engine),
 * which kvtier fills and indexes but never frees.
 */
export type GpuTierOptions = {
  kind: 'gpu';
  name?: string;
  /** CUDA device of an allocated pool (default 0). */
  device?: number;
} & (
  | { bytes: number; region?: undefined; layout?: undefined }
  | {
      region: DeviceRegion;
      bytes?: number;
      /**
       * The region is an engine's paged KV pool with this layout (offsets from the region's
       * start): each slot is one of the engine's blocks, `blocks` (default all of them), so
       * blocks go in and out of the engine's cache directly.
       */
      layout?: KvLayout;
      blocks?: readonly number[];
    }
);

export interface HostTierOptions {
  kind: 'host';
  /** Capacity in bytes (rounded down to whole blocks). */
  bytes: number;
  name?: string;
}

export interface FileTierOptions {
  kind: 'file';
  dir: string;
  /** Capacity in bytes: bytes / blockBytes blocks, or bytes / the encoded size with a codec. */
  bytes: number;
  name?: string;
  /** Store blocks encoded (lossy; docs/codecs.md). Default: as they are. */
  codec?: FileTierCodecOptions;
}

export type { FileTierCodecOptions } from './tier-codec.js';

/**
 * The options of tier kinds that a layer above registers as block sources (lib/warehouse/
 * sources.ts), by kind: the peer layer adds `peer` (lib/peer/peer-source.ts) by declaration merging,
 * so the warehouse names no such kind itself.
 */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type
export interface SourceTierOptionsByKind {}

/** A registered source kind's name ('peer'). */
export type SourceKind = Extract<keyof SourceTierOptionsByKind, string>;

export type SourceTierOptions = SourceTierOptionsByKind[SourceKind];

export type LocalTierOptions = GpuTierOptions | HostTierOptions | FileTierOptions;

/** Local tiers fastest first; a source tier (a peer), when given, comes last. */
export type TierOptions = LocalTierOptions | SourceTierOptions;

/** A policy name from lib/policy (default: the simulator-tested default), or a factory. */
export type PolicyOption = string | PolicyFactory;

export interface WarehouseOptions {
  /** Bytes per block: all layers' K and V for one block of tokens. */
  blockBytes: number;
  /**
   * Fastest first: at most one GPU tier, then at most one host tier, then at most one file tier,
   * then at most one peer.
   */
  tiers: TierOptions[];
  policy?: PolicyOption;
  /**
   * 'sync': a put resolves only once its file-tier copy is durable (fdatasync), so it implies
   * writeThrough, and `stored` counts only blocks whose durable copy landed.
   */
  durability?: Durability;
  /** Write every put to the file tier too, not only on eviction. */
  writeThrough?: boolean;
  /** Copy blocks read from a lower tier into the top tier (default true). */
  promote?: boolean;
  /** The file engine (default: io_uring where usable, queue depth 32). */
  engine?: EngineOptions;
  /** Bound on bytes that prefetches move at once (default 64 blocks). */
  prefetchBytes?: number;
  /**
   * Predictive prefetch (docs/policies.md, "Predictive prefetch"): every `intervalMs` (default
   * 100) the top tier's policy forecasts which conversations return soonest, and their blocks held
   * in a lower tier move one tier up, within `bytesPerSecond` (credit capped at one second's
   * worth, at least one block), only when worth more than what they displace. Off by default;
   * with a policy that does not forecast (only `return-time` does) it is accepted and does
   * nothing (stats().predictivePrefetch.active is false).
   */
  predictivePrefetch?: PredictivePrefetchOptions;
  /**
   * Clock for policies and leases, in milliseconds (default Date.now). For tests and simulations
   * (test/integration/policy-parity.test.ts replays a trace's clock); it must never go backwards.
   */
  now?: () => number;
  /**
   * Tenants (docs/tenants.md): quotas per tier, retention classes, accounting and isolated keys,
   * through warehouse.tenant(name). Absent: one namespace, as before. With it, the Warehouse's
   * own methods act as an operator: they see the internal (per-tenant) keys.
   */
  tenancy?: TenancyOptions;
}

/** A tenant's quota in one tier: bytes (rounded down to whole blocks), or a share of the tier. */
export type TenantQuota = { bytes: number } | { share: number };

export interface TenancyOptions {
  /** Tokens per block: turns blocks into the tokens providers bill in. */
  blockTokens: number;
  /**
   * Retention classes by name: a time-to-live in ms after a block's last use (put or hit), or
   * 'pinned' (kept until its own tenant's quota or evict removes it).
   */
  retentionClasses?: Record<string, number | 'pinned'>;
  tenants: TenantOptions[];
  /**
   * The warehouse secret the tenants' key salts derive from (at least 16 bytes). Absent: read
   * from the file tier's directory (tenancy.key), or made at random and kept there; without a
   * file tier, random per open.
   */
  secret?: Uint8Array;
  /** Clock for retention (default: the warehouse's `now`, else Date.now). */
  now?: () => number;
}

export interface TenantOptions {
  /** 1 to 64 of [A-Za-z0-9._-]. */
  name: string;
  /** Per tier name (TierOptions.name, or its kind when unnamed); unlisted tiers: no quota. */
  quota?: Record<string, TenantQuota>;
  /** A retentionClasses name; absent: the policy alone decides. */
  retention?: string;
  /** A put whose chain is shorter (keys × blockTokens) stores nothing: status 'too-short'. */
  minPrefixTokens?: number;
  /** Default priority of this tenant's puts. */
  priority?: number;
}

/** Blocks, bytes and tokens (blocks × blockTokens) of one tenant counter. */
export interface TenantCount {
  blocks: number;
  bytes: number;
  tokens: number;
}

export interface TenantTierStats {
  name: string;
  /** Slots this tenant's blocks hold in the tier (reserved ones included while a put is in flight). */
  blocks: number;
  usedBytes: number;
  quotaBytes?: number;
  /**
   * The tenant's counters in this tier (docs/tenants.md, "Accounting"): blocks its puts stored
   * into this tier (the highest of a put's copies; a demotion or promotion is no write), hits
   * served from it, and blocks whose last copy left from it, for space or by expiry.
   */
  written: TenantCount;
  read: TenantCount;
  evicted: TenantCount;
  expired: TenantCount;
}

export interface TenantStats {
  name: string;
  retention?: string;
  /** The retention class's time-to-live (absent: none, or 'pinned'). */
  ttlMs?: number;
  /**
   * Per tier: the local tiers, then the source tiers (a peer), as in WarehouseStats.tiers. Each
   * counter below is the sum of the tiers' (blocks the cluster served count in `read` alone).
   */
  tiers: TenantTierStats[];
  /** Counters since open. Blocks stored by this tenant's puts (cache writes). */
  written: TenantCount;
  /** Blocks served to this tenant's gets (cache reads, hits). */
  read: TenantCount;
  /** Blocks that left the warehouse other than by expiry or the tenant's own evict: for space. */
  evicted: TenantCount;
  /** Blocks removed because their retention ran out. */
  expired: TenantCount;
}

export interface PutOptions extends CallOptions {
  /** Engine-given priority: higher survives eviction longer. */
  priority?: number;
  writeThrough?: boolean;
}

/**
 * What became of one block of a put. 'stored': newly stored. 'present': already there (equal keys
 * mean equal content). 'busy': no room, every candidate slot pinned or in use; a retry later may
 * succeed. 'no-space': the disk is full (ENOSPC, EDQUOT or EFBIG), or (a tenant's put) the tenant is
 * at its quota in every tier the block could go to and none of its own blocks can make room.
 * 'io-error': another I/O failure. 'too-short' (a tenant's put): the chain is shorter than the
 * tenant's minPrefixTokens, so nothing of it was stored.
 */
export type PutStatus = 'stored' | 'present' | 'busy' | 'no-space' | 'io-error' | 'too-short';

export interface PutResult {
  /** Blocks newly stored. */
  stored: number;
  /** Blocks that were already there (equal keys mean equal content). */
  present: number;
  /** Blocks not stored: 'busy', 'no-space', 'io-error' or 'too-short' in `status`. */
  rejected: number;
  /**
   * Per key of the put, in order (a key named twice has the status of its first mention; the
   * counts above count it once).
   */
  status: PutStatus[];
  /**
   * Per key, the tier this put stored its block into (the highest, when a write-through copy went
   * lower too), or -1 where it stored none ('present' included). Set by a local warehouse.
   */
  tiers?: number[];
}

/**
 * What became of one key of an evict. 'removed': gone from every tier. 'absent': not held here.
 * 'pinned': held under a lease (or pinned by a reader meanwhile), so it stays.
 */
export type EvictStatus = 'removed' | 'absent' | 'pinned';

export interface EvictResult {
  /** Blocks removed. */
  removed: number;
  /** Per key of the evict, in order (a key named twice has the status of its first mention). */
  status: EvictStatus[];
}

/** lookup changes nothing, so the fields are checked and reach no policy (docs/policies.md). */
export type LookupOptions = CallOptions;

export interface LookupResult {
  /** Leading keys cached: the prefix an engine need not recompute. */
  prefix: number;
  /** Per key, the index of the fastest tier holding it, or -1. */
  tiers: number[];
}

export interface GetOptions extends CallOptions {
  signal?: AbortSignal;
  promote?: boolean;
  /** Whether a local miss may be fetched from the cluster (setRemote; default true). */
  remote?: boolean;
}

export interface GetResult {
  /** Per key, whether dst now holds its block. */
  found: boolean[];
  count: number;
  /** Leading keys found. */
  prefix: number;
  /**
   * Per key, the tier it was read from, or -1. Past the local tiers come the peer tier (when
   * there is one) and then the cluster (setRemote): a block fetched from another node of the
   * cluster reads one past the last of those.
   */
  tiers: number[];
}

/**
 * Blocks this warehouse does not hold but can fetch: a peer given as the last tier, or the cluster
 * (another node's warehouse, attached with setRemote). Consulted on a local miss, in that order,
 * by one routine (lib/warehouse/sources.ts). A block it cannot deliver, stale or gone, or a source
 * that is down, is reported not found: fetch never rejects for that, only for an abort.
 */
export interface BlockSource {
  /** Writes the block of keys[j] into block at[j] of dst where it can; per key, whether it did. */
  fetch(
    keys: readonly Key[],
    dst: Target,
    at: readonly number[],
    signal?: AbortSignal,
  ): Promise<boolean[]>;
  /**
   * A write-through sink: stores block at[j] of src under keys[j] beside every put's local copy;
   * put resolves once it is done. Never rejects (a failure costs only that copy).
   */
  store?(keys: readonly Key[], src: Target, at: readonly number[]): Promise<void>;
  /** The cluster's state, reported as stats().cluster. */
  stats?(): ClusterStats;
}

/** A source opened from a tier description (a peer): listed in stats().tiers, closed with the warehouse. */
export interface SourceTier extends BlockSource {
  readonly name: string;
  readonly kind: SourceKind;
  tierStats(): TierStats;
  close(): Promise<void>;
}

export interface ClusterStats {
  /** 'ok', or 'degraded' while the cluster index cannot be reached (local tiers still serve). */
  state: string;
  degraded: boolean;
  [field: string]: unknown;
}

/** Told, after each operation, which keys entered the warehouse and which left it entirely. */
export type ChangeListener = (added: readonly Key[], removed: readonly Key[]) => void;

export interface PrefetchOptions extends CallOptions {
  /** Tier index or name to bring blocks up to (default: the top tier). */
  to?: number | string;
  priority?: number;
  signal?: AbortSignal;
  /** Drop the prefetch if it has not started by this time (ms, same clock as `now`). */
  deadline?: number;
}

export interface PrefetchResult {
  moved: number;
  alreadyThere: number;
  missing: number;
}

export interface Lease {
  readonly id: number;
  readonly keys: readonly Key[];
  readonly expiresAt: number;
}

export interface TierStats {
  name: string;
  kind: TierKind | SourceKind;
  capacityBlocks: number;
  usedBlocks: number;
  hits: number;
  misses: number;
  bytesIn: number;
  bytesOut: number;
  evictions: number;
  promotions: number;
  demotions: number;
  corrupt: number;
  /** Local tiers: reads and writes of this tier that failed (their sum is `ioErrors`). */
  ioErrors?: number;
  /** Source tiers (a peer): operations that failed (their keys counted as misses). */
  errors?: number;
  /**
   * Local tiers: the codec blocks are stored with, 'none' when stored as they are. `bytesIn` and
   * `bytesOut` count blocks as the warehouse sees them (blockBytes each), not as stored.
   */
  codec?: 'none' | { codec: string; group?: number; scales?: string };
  /** Local tiers: bytes one block takes in the tier (blockBytes, or its encoding padded). */
  storedBlockBytes?: number;
}

export interface PredictivePrefetchOptions {
  /** Bytes per second staging may move up (each lower tier's copies together). */
  bytesPerSecond: number;
  /** How often the forecast is asked for, in ms (default 100). */
  intervalMs?: number;
}

/** Predictive prefetch's counters for the blocks staged into one tier. */
export interface StagedTierStats {
  name: string;
  /** Blocks staged into this tier. */
  staged: number;
  /** Staged blocks a get read from this tier before they left it. */
  read: number;
  /** Staged blocks that left this tier unread (evicted, or removed by evict()). */
  evictedUnread: number;
  /** Staged blocks staged once more, one tier further up, before any read. */
  restaged: number;
  /** Staged blocks still in this tier, unread: staged = read + evictedUnread + restaged + resident. */
  resident: number;
}

export interface PredictivePrefetchStats {
  /** False when the top tier's policy does not forecast returns: the option does nothing. */
  active: boolean;
  /** Why it is not active. */
  reason?: string;
  /** Forecasts asked for so far (timer ticks that ran). */
  ticks: number;
  /** Forecast blocks not staged: worth no more than what they would displace. */
  refused: number;
  /** Forecast blocks whose copy failed (a damaged source, dropped and counted corrupt, or I/O). */
  failed: number;
  /** Per local tier, in tier order. */
  tiers: StagedTierStats[];
}

export interface WarehouseStats {
  blockBytes: number;
  blocks: number;
  gets: number;
  hits: number;
  misses: number;
  /** hits / (hits + misses) over every key asked for by get(). */
  hitRate: number;
  corrupt: number;
  ioErrors: number;
  /** Blocks served by other nodes of the cluster after a local miss (counted in hits too). */
  remoteHits: number;
  tiers: TierStats[];
  /** Present when the warehouse is in a cluster (setRemote). */
  cluster?: ClusterStats;
  /** Present with `tenancy`: each tenant's usage and counters. */
  tenants?: TenantStats[];
  /** Present with the `predictivePrefetch` option. */
  predictivePrefetch?: PredictivePrefetchStats;
}

/** Slots reserved for bytes written in place (Warehouse.reserve). */
export interface Reservation {
  /** Per key: the memory its bytes go to, or why it needs none. */
  readonly slots: (LentBlock | 'present' | 'rejected')[];
  /**
   * The bytes are in place: stores the blocks; resolves with the stored. `checksums` (one per
   * filled slot, in key order), when the writer computed them, spare reading the slots again.
   */
  commit(checksums?: ArrayLike<number>): Promise<{ stored: number[]; present: number }>;
  /** Nothing (or not everything) arrived: gives the slots back. */
  abort(): void;
}

/** A host-tier slot that belongs to no key yet (Warehouse.claim). */
export interface LandingSlot {
  readonly target: Target;
  readonly offset: number;
  /** @internal The slot's number in the host tier. */
  readonly slot: number;
}

/** A block lent out of the host tier (Warehouse.lend). */
export interface LentBlock {
  target: Target;
  offset: number;
  length: number;
  checksum: number;
}

/** close()'s error: `unwritten` names the blocks it could not write down (lost). */
export interface CloseError extends KvtierError {
  readonly unwritten: Key[];
}
