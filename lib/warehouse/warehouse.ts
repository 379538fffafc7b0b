/**
 * The Warehouse: put, lookup, get, prefetch, pin and evict blocks across tiers. It decides with
 * the BlockIndex and its policies, moves bytes with the engines (memory copies and file I/O on
 * kvtier's own threads), and checks every block's CRC-32C on the way out: a block that fails it
 * is dropped and counted, never returned.
 */
import {
  checkTarget,
  createEngine,
  type EngineOptions,
  type IoEngine,
  type Target,
} from '../core/engine.js';
import { abortError, KvtierError } from '../core/errors.js';
import { DeviceRegion } from '../core/gpu/device-region.js';
import { createCopyEngine } from '../core/gpu/engines.js';
import { Region } from '../core/region.js';
import { DEFAULT_POLICY, isOffline, policyByName } from '../policy/index.js';
import type { AccessInfo, EvictionPolicy } from '../policy/policy.js';
import { ABSENT, BlockIndex, type Plan } from './block-index.js';
import { FileTier, type Durability } from './file-tier.js';
import type { KvLayout } from '../layout/kv-layout.js';
import { GpuTier } from './gpu-tier.js';
import { HostTier } from './host-tier.js';
import { KeyChain, toKey, toKeys, type Key, type KeyLike } from '../keys/keys.js';
import { badArgument, func, guard, integer } from '../core/validate.js';
import {
  checkGetOptions,
  checkPinOptions,
  checkPrefetchOptions,
  checkPutOptions,
  checkWarehouseOptions,
  leaseId,
} from './options.js';
import { PrefetchQueue } from './prefetch.js';
import type { SlotBlock, SlotPlace, Tier, TierKind } from './tier.js';
import { TransferRound } from './transfers.js';
import { PeerTier, type PeerTierOptions } from '../peer/peer-tier.js';

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
  bytes: number;
  name?: string;
}

export type { PeerTierOptions } from '../peer/peer-tier.js';

/** Local tiers fastest first; a peer, when given, comes last. */
export type TierOptions = GpuTierOptions | HostTierOptions | FileTierOptions | PeerTierOptions;

/** A policy name from lib/policy (default: the simulator-tested default), or a factory. */
export type PolicyOption = string | (<K>(capacity: number) => EvictionPolicy<K>);

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
  /** Clock for policies and leases, in milliseconds (default Date.now). */
  now?: () => number;
}

export interface PutOptions {
  /** Engine-given priority: higher survives eviction longer. */
  priority?: number;
  writeThrough?: boolean;
}

/**
 * What became of one block of a put. 'stored': newly stored. 'present': already there (equal keys
 * mean equal content). 'busy': no room, every candidate slot pinned or in use; a retry later may
 * succeed. 'no-space': the disk is full (ENOSPC, EDQUOT or EFBIG). 'io-error': another I/O failure.
 */
export type PutStatus = 'stored' | 'present' | 'busy' | 'no-space' | 'io-error';

/** Why a block could not be stored, when something failed. */
type PutFailure = 'no-space' | 'io-error';

function failureOf(error: KvtierError | undefined): PutFailure {
  return error?.code === 'KVTIER_NO_SPACE' ? 'no-space' : 'io-error';
}

export interface PutResult {
  /** Blocks newly stored. */
  stored: number;
  /** Blocks that were already there (equal keys mean equal content). */
  present: number;
  /** Blocks not stored: 'busy', 'no-space' or 'io-error' in `status`. */
  rejected: number;
  /**
   * Per key of the put, in order (a key named twice has the status of its first mention; the
   * counts above count it once).
   */
  status: PutStatus[];
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

export interface LookupResult {
  /** Leading keys cached: the prefix an engine need not recompute. */
  prefix: number;
  /** Per key, the index of the fastest tier holding it, or -1. */
  tiers: number[];
}

export interface GetOptions {
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
 * Blocks this warehouse does not hold but can fetch (the cluster: another node's warehouse).
 * Consulted on a local miss. A block it cannot deliver, stale or gone, is reported not found:
 * fetch never rejects for that, only for an abort.
 */
export interface BlockSource {
  /** Writes the block of keys[j] into block at[j] of dst where it can; per key, whether it did. */
  fetch(
    keys: readonly Key[],
    dst: Target,
    at: readonly number[],
    signal?: AbortSignal,
  ): Promise<boolean[]>;
  /** Reported as stats().cluster. */
  stats?(): ClusterStats;
}

export interface ClusterStats {
  /** 'ok', or 'degraded' while the cluster index cannot be reached (local tiers still serve). */
  state: string;
  degraded: boolean;
  [field: string]: unknown;
}

/** Told, after each operation, which keys entered the warehouse and which left it entirely. */
export type ChangeListener = (added: readonly Key[], removed: readonly Key[]) => void;

export interface PrefetchOptions {
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
  kind: TierKind | 'peer';
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
  /** Peer tier: operations that failed (their keys counted as misses). */
  errors?: number;
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

interface StorePlan {
  plan: Plan<Key>;
  /** Index of the block in the put's keys and source. */
  i: number;
  crc: number;
}

interface CopyPlan {
  plan: Plan<Key>;
  from: SlotPlace;
  length: number;
  checksum: number;
  priority: number;
}

interface TierExtra {
  bytesIn: number;
  bytesOut: number;
  corrupt: number;
}

const MEMORY_THREADS = 2;

export class Warehouse {
  readonly blockBytes: number;
  private readonly index: BlockIndex<Key>;
  private readonly tiers: Tier[];
  private readonly peer: PeerTier | undefined;
  private readonly extra: TierExtra[];
  private readonly fileEngine: IoEngine;
  private readonly memoryEngine: IoEngine;
  /** Present when a tier lives in GPU memory. */
  private readonly gpuCopy: IoEngine | undefined;
  private readonly now: () => number;
  private readonly promoteDefault: boolean;
  private readonly writeThroughDefault: boolean;
  private readonly durability: Durability;
  /** Keys with a put, promotion or eviction in progress: others wait for them to settle. */
  private readonly settling = new Map<Key, Promise<unknown>>();
  /** Names the plans of claim(), which are for slots rather than keys. */
  private landingSerial = 0;
  private readonly operations = new Set<Promise<unknown>>();
  /** File-tier header writes a put did not wait for (durability 'none'): a sync waits for them. */
  private readonly headerWrites = new Set<Promise<void>>();
  /** Plans already committed, so that an operation failing midway aborts only the others. */
  private readonly committed = new WeakSet<Plan<Key>>();
  private readonly leases = new Map<number, { lease: Lease; timer: NodeJS.Timeout }>();
  private nextLease = 1;
  /** No lease expires before this time (by `now`), so most operations skip the scan. */
  private nextExpiry = Infinity;
  private readonly prefetcher: PrefetchQueue;
  private closing: Promise<void> | undefined;
  private counters = { gets: 0, hits: 0, misses: 0, corrupt: 0, ioErrors: 0, remoteHits: 0 };
  private readonly listeners = new Set<ChangeListener>();
  private remote: BlockSource | undefined;

  private constructor(
    options: WarehouseOptions,
    tiers: Tier[],
    fileEngine: IoEngine,
    memoryEngine: IoEngine,
    gpuCopy: IoEngine | undefined,
    policy: <K>(capacity: number) => EvictionPolicy<K>,
    peer: PeerTier | undefined,
  ) {
    this.gpuCopy = gpuCopy;
    this.blockBytes = options.blockBytes;
    this.tiers = tiers;
    this.peer = peer;
    this.extra = tiers.map(() => ({ bytesIn: 0, bytesOut: 0, corrupt: 0 }));
    this.fileEngine = fileEngine;
    this.memoryEngine = memoryEngine;
    this.now = options.now ?? Date.now;
    this.promoteDefault = options.promote ?? true;
    this.writeThroughDefault = options.writeThrough ?? false;
    this.durability = options.durability ?? 'none';
    this.index = new BlockIndex<Key>(
      tiers.map((t) => ({ name: t.name, capacity: t.slots, policy: policy<Key>(t.slots) })),
    );
    this.prefetcher = new PrefetchQueue(options.prefetchBytes ?? 64 * options.blockBytes, this.now);
  }

  static async open(given: WarehouseOptions): Promise<Warehouse> {
    const options = checkWarehouseOptions(given);
    const { blockBytes } = options;
    if (!Number.isSafeInteger(blockBytes) || blockBytes < 1) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `blockBytes must be a positive integer, got ${blockBytes}`,
      );
    }
    if (!Array.isArray(options.tiers) || options.tiers.length === 0) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', 'a warehouse needs at least one tier');
    }
    const kinds = options.tiers.map((t) => t?.kind);
    const order = kinds.join(',');
    const locals = ['host', 'file', 'host,file'];
    const allowed = [...locals, 'gpu', ...locals.map((o) => `gpu,${o}`)];
    if (!allowed.includes(order.replace(/,peer$/, '').replace(/^peer$/, ''))) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `tiers must be some of gpu, host and file, in that order (fastest first), optionally followed by one peer, got [${order}]`,
      );
    }
    const peerOptions = options.tiers.find((t): t is PeerTierOptions => t.kind === 'peer');
    const localOptions = options.tiers.filter(
      (t): t is GpuTierOptions | HostTierOptions | FileTierOptions => t.kind !== 'peer',
    );
    for (const t of localOptions) {
      if (t.kind === 'gpu' && t.region !== undefined) {
        if (!(t.region instanceof DeviceRegion)) {
          throw new KvtierError('KVTIER_BAD_ARGUMENT', 'a GPU tier region must be a DeviceRegion');
        }
        if (t.layout !== undefined) continue; // the layout says how many blocks
        if (t.bytes === undefined) continue; // as many blocks as the region holds
      }
      if (!Number.isSafeInteger(t.bytes) || t.bytes! < blockBytes) {
        throw new KvtierError(
          'KVTIER_BAD_ARGUMENT',
          `tier ${t.name ?? t.kind} needs a capacity of at least one block (${blockBytes} bytes), got ${String(t.bytes)}`,
        );
      }
    }
    const policy = resolvePolicy(options.policy ?? DEFAULT_POLICY);
    const durability = options.durability ?? 'none';
    if (durability !== 'none' && durability !== 'sync') {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', `durability must be 'none' or 'sync'`);
    }

    const fileEngine = createEngine(options.engine ?? {});
    const memoryEngine = createEngine({ kind: 'threads', queueDepth: MEMORY_THREADS });
    const tiers: Tier[] = [];
    let gpuCopy: IoEngine | undefined;
    let peer: PeerTier | undefined;
    try {
      const gpu = options.tiers.find((t): t is GpuTierOptions => t.kind === 'gpu');
      if (gpu) {
        const device = gpu.region?.device ?? gpu.device ?? 0;
        // Moves between files and the GPU tier go through host staging (to be checksummed), so
        // the copy engine is all a GPU tier needs.
        gpuCopy = createCopyEngine({ device });
      }
      for (const t of localOptions) {
        if (t.kind === 'gpu') {
          const name = t.name ?? 'gpu';
          tiers.push(
            t.region !== undefined && t.layout !== undefined
              ? GpuTier.paged(name, t.region, t.layout, blockBytes, t.blocks)
              : t.region !== undefined
                ? GpuTier.over(
                    name,
                    t.region,
                    blockBytes,
                    t.bytes === undefined ? undefined : Math.floor(t.bytes / blockBytes),
                  )
                : GpuTier.allocate(
                    name,
                    Math.floor(t.bytes / blockBytes),
                    blockBytes,
                    t.device ?? 0,
                  ),
          );
          continue;
        }
        const slots = Math.floor(t.bytes / blockBytes);
        if (t.kind === 'host') {
          tiers.push(new HostTier(t.name ?? 'host', slots, blockBytes));
        } else {
          tiers.push(
            await FileTier.open({
              name: t.name ?? 'file',
              dir: t.dir,
              slots,
              blockBytes,
              durability,
              engine: fileEngine,
            }),
          );
        }
      }
      if (peerOptions) peer = await PeerTier.open(peerOptions, blockBytes);
      const warehouse = new Warehouse(
        options,
        tiers,
        fileEngine,
        memoryEngine,
        gpuCopy,
        policy,
        peer,
      );
      await warehouse.restore();
      return warehouse;
    } catch (e) {
      await Promise.allSettled(tiers.map((t) => t.close()));
      if (peer) await peer.close();
      await Promise.allSettled([fileEngine.close(), memoryEngine.close(), gpuCopy?.close()]);
      throw e;
    }
  }

  /** Rebuilds the index from what the file tier already holds. */
  private async restore(): Promise<void> {
    for (let t = 0; t < this.tiers.length; t++) {
      const tier = this.tiers[t]!;
      if (!tier.scan) continue;
      const { blocks, corrupt } = await tier.scan();
      this.extra[t]!.corrupt += corrupt;
      this.counters.corrupt += corrupt;
      blocks.sort((a, b) => a.generation - b.generation); // oldest first, so LRU order survives
      for (const b of blocks) this.index.restore(b.key, t, b.slot, b, this.info(0, 0, 1));
      this.index.rebuildFreeSlots(t);
    }
  }

  private info(priority: number, depth: number, chainLength: number): AccessInfo {
    return { now: this.now(), priority, depth, chainLength };
  }

  private tierIndex(to: number | string | undefined): number {
    if (to === undefined) return 0;
    const t = typeof to === 'number' ? to : this.tiers.findIndex((x) => x.name === to);
    if (!Number.isInteger(t) || t < 0 || t >= this.tiers.length) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', `no tier ${String(to)}`);
    }
    return t;
  }

  private assertOpen(): void {
    if (this.closing) throw new KvtierError('KVTIER_CLOSED', 'the warehouse is closed');
  }

  /** Runs an operation so that close() can wait for it. */
  private track<T>(p: Promise<T>): Promise<T> {
    this.operations.add(p);
    const done = (): void => {
      this.operations.delete(p);
    };
    p.then(done, done);
    return p;
  }

  private checkSpan(what: string, target: Target, blocks: number): void {
    if (target instanceof DeviceRegion) {
      // Blocks are checksummed on the host side of every transfer; GPU memory is a tier, and
      // engines' GPU blocks reach the warehouse through a gather into host memory.
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `${what} must be host memory (a Region or a buffer); gather GPU blocks into a pinned Region first`,
      );
    }
    const size = target.byteLength;
    if (target instanceof Region) target.assertOpen();
    if (size < blocks * this.blockBytes) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `${what} holds ${size} bytes; ${blocks} blocks of ${this.blockBytes} bytes need ${blocks * this.blockBytes}`,
      );
    }
  }

  /**
   * Waits for the operations changing any of `keys` to end. Callers loop on unsettled(), whose
   * check runs synchronously right before they continue, so no other operation slips in between.
   */
  private async settle(keys: readonly Key[]): Promise<void> {
    const waits = new Set<Promise<unknown>>();
    for (const k of keys) {
      const p = this.settling.get(k);
      if (p) waits.add(p);
    }
    await Promise.allSettled(waits);
  }

  private unsettled(keys: readonly Key[]): boolean {
    for (const k of keys) if (this.settling.has(k)) return true;
    return false;
  }

  /**
   * Marks keys as changing until release() is called: operations on them wait (settle()) rather
   * than read a slot that is being rewritten.
   */
  private hold(): { add(keys: Iterable<Key>): void; release(): void } {
    let release!: () => void;
    const p = new Promise<void>((r) => (release = r));
    const held: Key[] = [];
    return {
      add: (keys) => {
        for (const k of keys) {
          this.settling.set(k, p);
          held.push(k);
        }
      },
      release: () => {
        for (const k of held) if (this.settling.get(k) === p) this.settling.delete(k);
        release();
      },
    };
  }

  /** Keys of plans and their victims. */
  private static planKeys(plans: readonly { plan: Plan<Key> }[]): Key[] {
    const keys: Key[] = [];
    for (const { plan } of plans) {
      keys.push(plan.key);
      for (const m of plan.moves) keys.push(m.key);
    }
    return keys;
  }

  // ---------------------------------------------------------------------------------------- put

  /**
   * Stores blocks: block i of `src` (bytes [i*blockBytes, (i+1)*blockBytes)) under keys[i], in the
   * top tier (and the file tier too with writeThrough). Resolves once every stored block is
   * readable; with durability 'sync', once its file copy is durable.
   */
  async put(
    keys: KeyChain | readonly KeyLike[],
    src: Target,
    given: PutOptions = {},
  ): Promise<PutResult> {
    this.assertOpen();
    this.expireLeases();
    const list = toKeys(keys);
    checkTarget(src, 'src');
    const options = checkPutOptions(given);
    this.checkSpan('src', src, list.length);
    const priority = options.priority ?? 0;
    return this.track(
      this.putNow(list, src, priority, options.writeThrough ?? this.writeThroughDefault),
    );
  }

  private async putNow(
    keys: Key[],
    src: Target,
    priority: number,
    writeThrough: boolean,
  ): Promise<PutResult> {
    while (this.unsettled(keys)) await this.settle(keys);
    const status = new Array<PutStatus>(keys.length);
    const result: PutResult = { stored: 0, present: 0, rejected: 0, status };
    const fresh: number[] = [];
    const first = new Map<Key, number>();
    const durable = this.durableTier();
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i]!;
      if (first.has(key)) continue;
      first.set(key, i);
      const e = this.index.get(key);
      // Under durability 'sync' a block counts as there only once its durable copy is.
      if (e && (durable === ABSENT || e.slots[durable] !== ABSENT)) {
        result.present++;
        status[i] = 'present';
      } else {
        fresh.push(i);
      }
    }
    if (fresh.length > 0) {
      // The peer copy is written beside the local one; put resolves once both are done, since the
      // caller may reuse src then. A failing peer is counted, and costs only that copy.
      const [outcome] = await Promise.all([
        this.storeBlocks(keys, fresh, src, priority, writeThrough),
        this.peer?.writeThrough(keys, fresh, src),
      ]);
      for (const i of fresh) {
        status[i] = outcome.get(keys[i]!) ?? 'busy';
        if (status[i] === 'stored') result.stored++;
        else result.rejected++;
      }
    }
    for (let i = 0; i < keys.length; i++) status[i] ??= status[first.get(keys[i]!)!]!;
    return result;
  }

  private async storeBlocks(
    keys: Key[],
    fresh: number[],
    src: Target,
    priority: number,
    writeThrough: boolean,
  ): Promise<Map<Key, PutStatus>> {
    // 1. Plans: a slot in the top tier (and the file tier when writing through, which durability
    // 'sync' implies) for each block.
    const durable = this.durableTier();
    const last = this.tiers.length - 1;
    const targets = (writeThrough || durable !== ABSENT) && last > 0 ? [0, last] : [0];
    const plans: StorePlan[] = [];
    for (const i of fresh) {
      const info = this.info(priority, i, keys.length);
      const e = this.index.get(keys[i]!);
      for (const t of targets) {
        if (e && e.slots[t] !== ABSENT) continue; // already there (a host copy awaiting its durable one)
        // A put larger than a tier's evictable room spills into the tiers below it.
        for (let at = t; at < this.tiers.length; at++) {
          const plan = this.index.plan(keys[i]!, at, info);
          if (plan) {
            plans.push({ plan, i, crc: 0 });
            break;
          }
          if (targets.includes(at + 1)) break;
        }
      }
    }
    const held = this.hold();
    held.add(fresh.map((i) => keys[i]!));
    held.add(Warehouse.planKeys(plans));
    try {
      return await this.executeStore(keys, src, priority, plans);
    } catch (e) {
      this.abortUncommitted(plans.map((p) => p.plan));
      throw e;
    } finally {
      held.release();
    }
  }

  /**
   * Syncs the tiers that keep blocks across a restart, once the header writes still in flight are
   * down, so that every copy committed to them so far survives a crash. False if the sync failed.
   */
  /** Syncs the file tiers once pending header writes are down; resolves with why it failed. */
  private async syncFiles(): Promise<PutFailure | undefined> {
    await Promise.allSettled([...this.headerWrites]);
    const sync = new TransferRound();
    for (const t of this.tiers) t.sync?.(sync.file);
    if (sync.file.length === 0) return undefined;
    const r = await this.fileEngine.submit(sync.file);
    if (r.ok) return undefined;
    this.counters.ioErrors++;
    return failureOf(r.errors.find((e) => e !== undefined));
  }

  /** The tier a durable copy lives in (the file tier, last), or ABSENT. */
  private persistTier(): number {
    const last = this.tiers.length - 1;
    const t = this.tiers[last]!;
    return t.scan && t.sync ? last : ABSENT;
  }

  /** The tier whose copy a put under durability 'sync' must land in, or ABSENT. */
  private durableTier(): number {
    if (this.durability !== 'sync') return ABSENT;
    const last = this.tiers.length - 1;
    return this.tiers[last]!.durable ? last : ABSENT;
  }

  private async executeStore(
    keys: Key[],
    src: Target,
    priority: number,
    plans: StorePlan[],
  ): Promise<Map<Key, PutStatus>> {
    const bs = this.blockBytes;
    // 2. Make room for them.
    const failed = await this.makeRoom(plans.map((p) => p.plan));

    // 3. The blocks themselves; the engine threads checksum each one as it is written.
    const round = new TransferRound();
    const writes: { entry: (typeof plans)[number]; at: number }[] = [];
    for (const entry of plans) {
      const { plan, i } = entry;
      if (failed.has(plan)) continue;
      const at = round.move(
        { kind: 'memory', target: src, offset: i * bs },
        this.place(plan.tier, plan.slot),
        bs,
        true,
      );
      this.extra[plan.tier]!.bytesIn += bs;
      writes.push({ entry, at });
    }
    const outcomes = await round.run(this.memoryEngine, this.fileEngine, this.gpuCopy);
    for (const { entry, at } of writes) {
      const o = outcomes[at]!;
      if (o.ok && o.checksum !== undefined) {
        entry.crc = o.checksum;
      } else {
        failed.set(entry.plan, failureOf(o.error));
        this.counters.ioErrors++;
      }
    }

    // 4. Headers, once the payloads are down and their checksums known: a slot never describes
    // bytes that were not written.
    const headers = new TransferRound();
    const landing = this.tiers.map((): SlotBlock[] => []);
    const described: Plan<Key>[][] = this.tiers.map(() => []);
    for (const { plan, crc } of plans) {
      if (failed.has(plan) || !this.tiers[plan.tier]!.describe) continue;
      landing[plan.tier]!.push({ slot: plan.slot, key: plan.key, length: bs, checksum: crc });
      described[plan.tier]!.push(plan);
    }
    this.describeAll(headers, landing);
    if (headers.file.length > 0 && this.durability === 'sync') {
      const r = await this.fileEngine.submit(headers.file);
      if (!r.ok) {
        // Headers are few and grouped; one failing leaves its tier's new blocks undescribed.
        const why = failureOf(r.errors.find((e) => e !== undefined));
        for (const group of described) for (const plan of group) failed.set(plan, why);
        this.counters.ioErrors++;
      }
    } else if (headers.file.length > 0) {
      // Without durability the headers only serve a later restart, so the put does not wait for
      // them (close() does, and so does a sync for a durable put: syncFiles()). A header that
      // lands late over a reused slot names a block whose checksum the new payload fails: a miss
      // after restart, never wrong data.
      const written = this.fileEngine.submit(headers.file).then((r) => {
        if (!r.ok) this.counters.ioErrors++;
      });
      this.headerWrites.add(written);
      const forget = (): void => void this.headerWrites.delete(written);
      written.then(forget, forget);
      void this.track(written);
    }

    // 5. Durability before anyone is told the block is there.
    if (this.durability === 'sync' && this.tiers.some((t) => t.durable)) {
      const why = await this.syncFiles();
      if (why !== undefined) {
        // Nothing written by this put can be promised durable: none of it is committed.
        for (const { plan } of plans) if (!failed.has(plan)) failed.set(plan, why);
      }
    }

    // 6. Commit: the index changes only now, all at once.
    const durable = this.durableTier();
    const storedKeys = new Set<Key>();
    const failures = new Map<Key, PutFailure>();
    const added: Key[] = [];
    const removed: Key[] = [];
    for (const { plan, crc, i } of plans) {
      const failure = failed.get(plan);
      if (failure !== undefined) {
        this.index.abort(plan);
        // A full disk is what the caller can act on; it wins over another failure of the key.
        if (failures.get(plan.key) !== 'no-space') failures.set(plan.key, failure);
        continue;
      }
      this.index.commit(plan, this.info(priority, i, keys.length), { length: bs, checksum: crc });
      this.committed.add(plan);
      if (this.listeners.size > 0) {
        added.push(plan.key);
        this.evictedBy(plan, removed);
      }
      // Under durability 'sync', only a durable copy makes a block stored.
      if (durable === ABSENT || plan.tier === durable) storedKeys.add(plan.key);
    }
    this.changed(added, removed);
    // A key with neither a stored copy nor a failure found no slot: the tier is busy.
    const status = new Map<Key, PutStatus>(failures);
    for (const key of storedKeys) status.set(key, 'stored');
    return status;
  }

  /**
   * Carries out the moves of plans: victims written down a tier, deepest tier first, so every
   * slot a move frees is free before the next move (or the new block) reuses it. Returns the
   * plans whose moves failed, and why; those must be aborted, not committed.
   */
  private async makeRoom(plans: readonly Plan<Key>[]): Promise<Map<Plan<Key>, PutFailure>> {
    const failed = new Map<Plan<Key>, PutFailure>();
    for (let from = this.tiers.length - 1; from >= 0; from--) {
      const round = new TransferRound();
      const owners: Plan<Key>[] = [];
      const landing = this.tiers.map((): SlotBlock[] => []);
      for (const plan of plans) {
        for (const m of plan.moves) {
          if (m.fromTier !== from || m.toTier === ABSENT) continue;
          const e = this.index.get(m.key)!;
          round.move(this.place(m.fromTier, m.fromSlot), this.place(m.toTier, m.toSlot), e.length);
          landing[m.toTier]!.push({
            slot: m.toSlot,
            key: m.key,
            length: e.length,
            checksum: e.checksum,
          });
          owners.push(plan);
          this.extra[m.fromTier]!.bytesOut += e.length;
          this.extra[m.toTier]!.bytesIn += e.length;
        }
      }
      if (round.length === 0) continue;
      this.describeAll(round, landing);
      (await round.run(this.memoryEngine, this.fileEngine, this.gpuCopy)).forEach((o, n) => {
        if (!o.ok) {
          failed.set(owners[n]!, failureOf(o.error));
          this.counters.ioErrors++;
        }
      });
    }
    return failed;
  }

  /** Adds the header writes of blocks landing in each tier that keeps headers. */
  private describeAll(round: TransferRound, landing: readonly SlotBlock[][]): void {
    landing.forEach((blocks, t) => {
      if (blocks.length > 0) this.tiers[t]!.describe?.(round.file, blocks);
    });
  }

  private place(tier: number, slot: number): SlotPlace {
    return this.tiers[tier]!.place(slot);
  }

  // ------------------------------------------------------------------------------------- lookup

  /** How much of a chain is cached, and where; changes nothing. */
  lookup(keys: KeyChain | readonly KeyLike[]): LookupResult {
    this.assertOpen();
    // A proxy's traps may throw anywhere in the walk below: that is a bad argument too.
    const tiers = guard('keys', () => this.topTiers(keys));
    let prefix = 0;
    while (prefix < tiers.length && tiers[prefix] !== ABSENT) prefix++;
    return { prefix, tiers };
  }

  private topTiers(keys: KeyChain | readonly KeyLike[]): number[] {
    let tiers: number[];
    if (keys instanceof KeyChain) {
      tiers = keys.keys().map((k) => this.index.topTier(k));
    } else {
      const list: readonly KeyLike[] = keys;
      if (!Array.isArray(keys)) toKeys(list); // throws the usual error
      tiers = new Array<number>(list.length);
      for (let i = 0; i < list.length; i++) {
        const k: KeyLike = list[i]!;
        // Only valid keys are ever stored, so a string found as it is needs no validation; the
        // check runs for the misses, which may be malformed (and then throw) or differ in case.
        let t = typeof k === 'string' ? this.index.topTier(k) : ABSENT;
        if (t === ABSENT) {
          const canonical = toKey(k);
          if (canonical !== k) t = this.index.topTier(canonical);
        }
        tiers[i] = t;
      }
    }
    return tiers;
  }

  // ---------------------------------------------------------------------------------------- get

  /**
   * Copies the blocks of `keys` that are cached into `dst` (block i at i*blockBytes). A block that
   * is not cached is reported missing, which is not an error. Every block read is checked against
   * its CRC-32C; one that fails is dropped, counted as corrupt, and read from a lower copy if any.
   */
  async get(
    keys: KeyChain | readonly KeyLike[],
    dst: Target,
    given: GetOptions = {},
  ): Promise<GetResult> {
    this.assertOpen();
    this.expireLeases();
    const list = toKeys(keys);
    checkTarget(dst, 'dst');
    const options = checkGetOptions(given);
    this.checkSpan('dst', dst, list.length);
    if (options.signal?.aborted) throw abortError(options.signal);
    return this.track(this.getNow(list, dst, options));
  }

  private async getNow(keys: Key[], dst: Target, options: GetOptions): Promise<GetResult> {
    while (this.unsettled(keys)) await this.settle(keys);
    const bs = this.blockBytes;
    const n = keys.length;
    const found = new Array<boolean>(n).fill(false);
    const tiers = new Array<number>(n).fill(ABSENT);
    const pinned: Key[] = [];
    this.counters.gets++;
    try {
      // Who holds what: one policy touch per key, then reads until every key is served or lost.
      let pending: number[] = [];
      for (let i = 0; i < n; i++) {
        const t = this.index.access(keys[i]!, this.info(0, i, n));
        if (t === ABSENT) continue;
        this.index.pin(keys[i]!);
        pinned.push(keys[i]!);
        tiers[i] = t;
        pending.push(i);
      }
      // What each read expects, fixed when it is issued: another get may drop or replace the
      // entry while this one is in flight.
      const expected: { slot: number; length: number; checksum: number }[] = [];
      while (pending.length > 0) {
        const round = new TransferRound();
        const at: number[] = [];
        const reading: number[] = [];
        for (const i of pending) {
          const e = this.index.get(keys[i]!);
          const t = tiers[i]!;
          if (!e || e.slots[t] === ABSENT) {
            tiers[i] = ABSENT; // dropped meanwhile by another reader that found it corrupt
            continue;
          }
          expected[i] = { slot: e.slots[t]!, length: e.length, checksum: e.checksum };
          reading.push(i);
          at.push(
            round.move(
              this.place(t, e.slots[t]!),
              { kind: 'memory', target: dst, offset: i * bs },
              e.length,
              true,
            ),
          );
        }
        const outcomes = await round.run(this.memoryEngine, this.fileEngine, this.gpuCopy);
        const retry: number[] = [];
        reading.forEach((i, j) => {
          const o = outcomes[at[j]!]!;
          const key = keys[i]!;
          const want = expected[i]!;
          const t = tiers[i]!;
          if (o.ok && o.bytes === want.length && o.checksum === want.checksum) {
            found[i] = true;
            this.extra[t]!.bytesOut += want.length;
            return;
          }
          // Corrupt, torn or unreadable: this copy is gone; a lower copy may still serve.
          if (o.ok) {
            this.extra[t]!.corrupt++;
            this.counters.corrupt++;
          } else {
            this.counters.ioErrors++;
          }
          // Drop exactly the copy that failed, if the index still points there.
          if (this.index.get(key)?.slots[t] === want.slot) {
            this.index.remove(key, t);
            if (!this.index.get(key)) this.changed([], [key]);
          }
          const next = this.index.topTier(key);
          const e = this.index.get(key);
          if (next !== ABSENT && !(next === t && e?.slots[t] === want.slot)) {
            tiers[i] = next;
            retry.push(i);
          } else {
            tiers[i] = ABSENT;
          }
        });
        pending = retry;
      }
      if (options.signal?.aborted) throw abortError(options.signal);
      if (this.peer) await this.readFromPeer(keys, dst, tiers, found, options);
      if (options.signal?.aborted) throw abortError(options.signal);
      const promote = options.promote ?? this.promoteDefault;
      if (this.remote && options.remote !== false) {
        await this.fetchRemote(keys, dst, found, tiers, promote, options.signal);
      }
      if (promote) await this.promoteFrom(keys, dst, tiers, found);
    } finally {
      for (const k of pinned) this.index.unpin(k);
    }
    let count = 0;
    for (const f of found) if (f) count++;
    let prefix = 0;
    while (prefix < n && found[prefix]) prefix++;
    this.counters.hits += count;
    this.counters.misses += n - count;
    return { found, count, prefix, tiers: tiers.map((t, i) => (found[i] ? t : ABSENT)) };
  }

  /**
   * Reads from the peer the keys no local tier served, then keeps them locally (unless promotion
   * is off): the next get of the same prefix is a local hit.
   */
  private async readFromPeer(
    keys: Key[],
    dst: Target,
    tiers: number[],
    found: boolean[],
    options: GetOptions,
  ): Promise<void> {
    const missing: number[] = [];
    const seen = new Set<Key>();
    for (let i = 0; i < keys.length; i++) {
      if (!found[i] && !seen.has(keys[i]!)) {
        seen.add(keys[i]!);
        missing.push(i);
      }
    }
    const got = await this.peer!.read(keys, missing, dst);
    for (const i of got) {
      found[i] = true;
      tiers[i] = this.tiers.length;
    }
    // A key named twice in one get is read once; its other places get a copy.
    for (let i = 0; i < keys.length; i++) {
      if (found[i]) continue;
      const first = keys.indexOf(keys[i]!);
      if (first !== i && found[first] && tiers[first] === this.tiers.length) {
        const bs = this.blockBytes;
        // dst is host memory (checkSpan refuses GPU memory), so it has byte views.
        const block = (at: number): Uint8Array =>
          dst instanceof Region
            ? dst.view(at, bs)
            : ArrayBuffer.isView(dst)
              ? new Uint8Array(dst.buffer, dst.byteOffset + at, bs)
              : new Uint8Array(dst as ArrayBuffer, at, bs);
        block(i * bs).set(block(first * bs));
        found[i] = true;
        tiers[i] = this.tiers.length;
      }
    }
    if (!(options.promote ?? this.promoteDefault)) return;
    const fresh = got.filter((i) => !this.index.get(keys[i]!) && !this.settling.has(keys[i]!));
    if (fresh.length > 0) await this.storeBlocks(keys, fresh, dst, 0, this.writeThroughDefault);
  }

  /** @internal Whether bytes may be written straight into host-tier slots (reserve(), claim()). */
  takesBytesInPlace(): boolean {
    return (
      this.tiers[0]!.kind === 'host' &&
      !this.writeThroughDefault &&
      this.durability !== 'sync' &&
      this.peer === undefined
    );
  }

  /**
   * @internal For the peer server: claims up to `count` host-tier slots, making room as a put
   * does, that belong to no key yet, so the network can write blocks into the store before
   * anyone has read their keys. land() gives a claimed slot its key; unclaim() frees it. Resolves
   * [] when this warehouse cannot take bytes in place (as reserve()).
   */
  async claim(count: number): Promise<LandingSlot[]> {
    this.assertOpen();
    this.expireLeases();
    integer(count, 'count');
    if (!this.takesBytesInPlace() || count < 1) return [];
    return this.track(
      (async () => {
        const plans: { plan: Plan<Key> }[] = [];
        for (let n = 0; n < count; n++) {
          // A name no key can have (keys are hex): the plan is for a slot, not for a key.
          const plan = this.index.plan(`landing ${this.landingSerial++}`, 0, this.info(0, 0, 1));
          if (!plan) break;
          plans.push({ plan });
        }
        const held = this.hold();
        held.add(Warehouse.planKeys(plans));
        try {
          const failed = await this.makeRoom(plans.map((p) => p.plan));
          const claimed: LandingSlot[] = [];
          const removed: Key[] = [];
          for (const { plan } of plans) {
            const place = this.place(0, plan.slot);
            if (
              failed.has(plan) ||
              place.kind !== 'memory' ||
              place.target instanceof DeviceRegion
            ) {
              this.index.abort(plan);
              continue;
            }
            this.index.claim(plan, this.info(0, 0, 1));
            this.committed.add(plan);
            this.evictedBy(plan, removed);
            claimed.push({ target: place.target, offset: place.offset, slot: plan.slot });
          }
          this.changed([], removed);
          return claimed;
        } catch (e) {
          this.abortUncommitted(plans.map((p) => p.plan));
          throw e;
        } finally {
          held.release();
        }
      })(),
    );
  }

  /**
   * @internal Gives claimed slots whose bytes have arrived their keys: keys[i]'s block is in
   * slots[i], and checksums[i] is its CRC-32C (computed as it arrived). Per key, whether it was
   * stored; a key already stored (or repeated in `keys`) is not, and its slot stays claimed.
   */
  async land(
    keys: readonly Key[],
    slots: readonly LandingSlot[],
    checksums: ArrayLike<number>,
  ): Promise<boolean[]> {
    this.assertOpen();
    if (slots.length !== keys.length || checksums.length !== keys.length) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', 'one slot and one checksum per key are needed');
    }
    return this.track(
      (async () => {
        while (this.unsettled(keys)) await this.settle(keys);
        // From the check above to the last adopt() nothing else runs: no await in between.
        const bs = this.blockBytes;
        const seen = new Set<Key>();
        const added: Key[] = [];
        const stored = keys.map((key, i) => {
          if (seen.has(key) || this.index.get(key)) return false;
          seen.add(key);
          this.index.adopt(key, 0, slots[i]!.slot, this.info(0, i, keys.length), {
            length: bs,
            checksum: checksums[i]! >>> 0,
          });
          this.extra[0]!.bytesIn += bs;
          added.push(key);
          return true;
        });
        this.changed(added, []);
        return stored;
      })(),
    );
  }

  /** @internal Frees claimed slots that will not be landed in. */
  unclaim(slots: readonly LandingSlot[]): void {
    for (const s of slots) this.index.unclaim(0, s.slot);
  }

  /**
   * @internal For the peer server: reserves host-tier slots for keys whose bytes will be written
   * there by someone else (the network), so a put needs no copy. Per key the reservation holds the
   * memory to fill, or 'present' or 'rejected'. The keys and the slots' previous owners are held
   * until commit() (checksums the filled slots and stores them) or abort(). Resolves undefined
   * when this warehouse cannot take bytes in place (no host tier on top, write-through, or
   * durability 'sync'): the caller then puts from its own buffer.
   */
  async reserve(keys: readonly KeyLike[]): Promise<Reservation | undefined> {
    this.assertOpen();
    this.expireLeases();
    const list = toKeys(keys);
    if (!this.takesBytesInPlace()) return undefined;
    let finish!: () => void;
    void this.track(new Promise<void>((resolve) => (finish = resolve)));
    const bs = this.blockBytes;
    let held: ReturnType<Warehouse['hold']> | undefined;
    const plans: StorePlan[] = [];
    try {
      while (this.unsettled(list)) await this.settle(list);
      const slots: Reservation['slots'] = [];
      const seen = new Set<Key>();
      let spill = false;
      list.forEach((key, i) => {
        if (seen.has(key) || this.index.get(key)) {
          slots.push('present');
          return;
        }
        seen.add(key);
        const plan = this.index.plan(key, 0, this.info(0, i, list.length));
        slots.push('rejected'); // until its slot is ready (below)
        if (plan) plans.push({ plan, i, crc: 0 });
        else spill = true;
      });
      if (spill) {
        // More than the host tier can take at once: put() spills such a batch into the tiers
        // below, which in-place writing cannot do.
        for (const p of plans) this.index.abort(p.plan);
        plans.length = 0;
        finish();
        return undefined;
      }
      held = this.hold();
      held.add(plans.map((p) => p.plan.key));
      held.add(Warehouse.planKeys(plans));
      const failed = await this.makeRoom(plans.map((p) => p.plan));
      const live = plans.filter((p) => {
        if (failed.has(p.plan)) {
          this.index.abort(p.plan);
          return false;
        }
        const place = this.place(0, p.plan.slot);
        // Only host memory can take bytes straight from the network.
        if (place.kind !== 'memory' || place.target instanceof DeviceRegion) {
          this.index.abort(p.plan);
          return false;
        }
        slots[p.i] = { target: place.target, offset: place.offset, length: bs, checksum: 0 };
        return true;
      });
      const present = slots.filter((x) => x === 'present').length;
      const release = (): void => {
        held?.release();
        finish();
      };
      let ended = false;
      return {
        slots,
        commit: async (checksums?: ArrayLike<number>) => {
          if (ended) throw new KvtierError('KVTIER_CLOSED', 'the reservation has ended');
          ended = true;
          try {
            let outcomes: { ok: boolean; checksum: number | undefined }[];
            if (checksums && checksums.length === live.length) {
              outcomes = live.map((_, n) => ({ ok: true, checksum: checksums[n]! >>> 0 }));
            } else {
              const round = new TransferRound();
              for (const p of live) {
                round.checksum(this.place(0, p.plan.slot) as SlotPlace & { kind: 'memory' }, bs);
              }
              outcomes = await round.run(this.memoryEngine, this.fileEngine);
            }
            const stored: number[] = [];
            const added: Key[] = [];
            const removed: Key[] = [];
            live.forEach((p, n) => {
              const o = outcomes[n]!;
              if (o.ok && o.checksum !== undefined) {
                this.index.commit(p.plan, this.info(0, p.i, list.length), {
                  length: bs,
                  checksum: o.checksum,
                });
                this.committed.add(p.plan);
                this.extra[0]!.bytesIn += bs;
                stored.push(p.i);
                added.push(p.plan.key);
                this.evictedBy(p.plan, removed);
              } else {
                this.index.abort(p.plan);
                this.counters.ioErrors++;
              }
            });
            // Listeners (the cluster index) hear of these as of any put.
            this.changed(added, removed);
            return { stored, present };
          } catch (e) {
            this.abortUncommitted(live.map((p) => p.plan));
            throw e;
          } finally {
            release();
          }
        },
        abort: () => {
          if (ended) return;
          ended = true;
          for (const p of live) this.index.abort(p.plan);
          release();
        },
      };
    } catch (e) {
      this.abortUncommitted(plans.map((p) => p.plan));
      held?.release();
      finish();
      throw e;
    }
  }

  /** @internal Whether persist() can make blocks durable: the last tier is a file tier. */
  get persists(): boolean {
    return this.persistTier() !== ABSENT;
  }

  /**
   * @internal For the peer server's durable puts (docs/protocol.md, "Durable puts"): gives each
   * stored key of `keys` a copy in the file tier (written down from the tier it is in, as close()
   * does for blocks held only in memory) and syncs the file tier, headers included. Resolves per
   * key whether its file copy is there and synced: a key that is not stored, or found no room, is
   * not. However the block arrived (copied, placed in reserved slots, landed), this is what makes
   * it survive a crash.
   */
  async persist(keys: readonly Key[]): Promise<boolean[]> {
    this.assertOpen();
    const last = this.persistTier();
    if (last === ABSENT) {
      throw new KvtierError('KVTIER_NOT_AVAILABLE', 'durable puts need a file tier');
    }
    return this.track(
      (async () => {
        while (this.unsettled(keys)) await this.settle(keys);
        const items: { key: Key; from: SlotPlace }[] = [];
        const pinned: Key[] = [];
        for (const key of new Set(keys)) {
          const e = this.index.get(key);
          if (!e || e.slots[last] !== ABSENT) continue;
          const top = this.index.topTier(key);
          // Pinned, so that nothing evicts the source while it is copied down.
          this.index.pin(key);
          pinned.push(key);
          items.push({ key, from: this.place(top, e.slots[top]!) });
        }
        let synced: boolean;
        try {
          for (let i = 0; i < items.length; i += FLUSH_BATCH) {
            await this.copyTo(items.slice(i, i + FLUSH_BATCH), last);
          }
          // Under durability 'sync' every file copy was synced before it was committed.
          synced =
            (items.length === 0 && this.durableTier() !== ABSENT) ||
            (await this.syncFiles()) === undefined;
        } finally {
          for (const k of pinned) this.index.unpin(k);
        }
        return keys.map((k) => synced && (this.index.get(k)?.slots[last] ?? ABSENT) !== ABSENT);
      })(),
    );
  }

  /**
   * @internal For the peer server: lends the host-tier copies of `keys` to `use` without copying
   * them out (undefined for a key not in the host tier). The lent blocks are pinned until `use`
   * settles, so the network can read their slots while nobody rewrites them. Lent blocks count as
   * hits; their checksums are passed on for the reader to verify.
   */
  async lend<T>(
    keys: readonly KeyLike[],
    use: (places: (LentBlock | undefined)[]) => Promise<T>,
  ): Promise<T> {
    this.assertOpen();
    const list = toKeys(keys);
    return this.track(
      (async () => {
        while (this.unsettled(list)) await this.settle(list);
        const pinned: Key[] = [];
        const places = list.map((k, i): LentBlock | undefined => {
          const e = this.index.get(k);
          if (!e || e.slots[0] === ABSENT || this.tiers[0]!.kind !== 'host') return undefined;
          const p = this.place(0, e.slots[0]!);
          if (p.kind !== 'memory' || !this.index.pin(k)) return undefined;
          pinned.push(k);
          this.index.access(k, this.info(0, i, list.length));
          this.extra[0]!.bytesOut += e.length;
          return { target: p.target, offset: p.offset, length: e.length, checksum: e.checksum };
        });
        this.counters.gets++;
        this.counters.hits += pinned.length;
        try {
          return await use(places);
        } finally {
          for (const k of pinned) this.index.unpin(k);
        }
      })(),
    );
  }

  /** Copies blocks just read from a lower tier into the top tier, from the verified dst bytes. */
  private async promoteFrom(
    keys: Key[],
    dst: Target,
    tiers: number[],
    found: boolean[],
  ): Promise<void> {
    const items: { i: number; key: Key }[] = [];
    for (let i = 0; i < keys.length; i++) {
      const local = tiers[i]! > 0 && tiers[i]! < this.tiers.length;
      if (found[i] && local && !this.settling.has(keys[i]!)) items.push({ i, key: keys[i]! });
    }
    if (items.length === 0) return;
    await this.copyTo(
      items.map(({ i, key }) => ({
        key,
        from: { kind: 'memory' as const, target: dst, offset: i * this.blockBytes },
      })),
      0,
    );
  }

  /**
   * Gives each key a slot in tier `to` (making room as put does) and copies its bytes there from
   * `from`. Returns how many landed.
   */
  private async copyTo(
    items: { key: Key; from: SlotPlace }[],
    to: number,
    errors?: KvtierError[],
  ): Promise<number> {
    const plans: CopyPlan[] = [];
    const seen = new Set<Key>();
    for (const { key, from } of items) {
      // A key named twice (two sequences sharing a prompt in one get) gets one slot, not two.
      if (seen.has(key)) continue;
      seen.add(key);
      const e = this.index.get(key);
      if (!e || e.slots[to] !== ABSENT) continue;
      const plan = this.index.plan(key, to, this.info(e.priority, 0, 1));
      if (plan) {
        plans.push({ plan, from, length: e.length, checksum: e.checksum, priority: e.priority });
      }
    }
    const held = this.hold();
    held.add(Warehouse.planKeys(plans));
    try {
      return await this.executeCopyTo(plans, to, errors);
    } catch (e) {
      this.abortUncommitted(plans.map((p) => p.plan));
      throw e;
    } finally {
      held.release();
    }
  }

  /** After an operation threw midway: its plans that were not committed give back what they hold. */
  private abortUncommitted(plans: readonly Plan<Key>[]): void {
    for (const plan of plans) {
      if (!this.committed.has(plan)) this.index.abort(plan);
    }
  }

  private async executeCopyTo(
    plans: CopyPlan[],
    to: number,
    errors?: KvtierError[],
  ): Promise<number> {
    const failed = await this.makeRoom(plans.map((p) => p.plan));
    const round = new TransferRound();
    const at = plans.map((p) =>
      failed.has(p.plan) ? -1 : round.move(p.from, this.place(to, p.plan.slot), p.length, true),
    );
    const outcomes = await round.run(this.memoryEngine, this.fileEngine, this.gpuCopy);
    const moved = plans.map((p, n) => {
      const o = at[n]! >= 0 ? outcomes[at[n]!] : undefined;
      if (o?.error) errors?.push(o.error);
      return o?.ok === true && o.checksum === p.checksum;
    });
    // Headers once the payloads are down, one write each so that each block knows whether its
    // own landed: a slot never describes bytes that were not written, and a block whose header
    // did not land (a full disk) is not counted as copied.
    const tier = this.tiers[to]!;
    if (tier.describe) {
      const headers = new TransferRound().file;
      const described: number[] = [];
      plans.forEach((p, n) => {
        if (!moved[n]) return;
        tier.describe!(headers, [
          { slot: p.plan.slot, key: p.plan.key, length: p.length, checksum: p.checksum },
        ]);
        described.push(n);
      });
      if (described.length > 0) {
        const r = await this.fileEngine.submit(headers);
        if (!r.ok) this.counters.ioErrors++;
        described.forEach((n, i) => {
          if (r.errors[i] === undefined) return;
          moved[n] = false;
          errors?.push(r.errors[i]);
        });
      }
    }
    let landed = 0;
    const removed: Key[] = [];
    plans.forEach((p, n) => {
      if (moved[n]) {
        this.index.commit(p.plan, this.info(p.priority, 0, 1), p);
        this.committed.add(p.plan);
        this.evictedBy(p.plan, removed);
        this.extra[to]!.bytesIn += p.length;
        landed++;
      } else {
        this.index.abort(p.plan);
      }
    });
    this.changed([], removed);
    return landed;
  }

  // ----------------------------------------------------------------------------------- prefetch

  /**
   * Brings cached blocks up to tier `to` ahead of need. Queued by priority, bounded in bytes in
   * flight, joined with transfers already under way, cancellable with a signal, dropped past its
   * deadline.
   */
  async prefetch(
    keys: KeyChain | readonly KeyLike[],
    given: PrefetchOptions = {},
  ): Promise<PrefetchResult> {
    this.assertOpen();
    this.expireLeases();
    const list = toKeys(keys);
    const options = checkPrefetchOptions(given);
    const to = this.tierIndex(options.to);
    if (options.signal?.aborted) throw abortError(options.signal);
    const job = this.prefetcher.enqueue(
      {
        bytes: list.length * this.blockBytes,
        priority: options.priority ?? 0,
        ...(options.deadline !== undefined ? { deadline: options.deadline } : {}),
        ...(options.signal !== undefined ? { signal: options.signal } : {}),
      },
      () => this.prefetchNow(list, to),
    );
    return this.track(job);
  }

  private async prefetchNow(keys: Key[], to: number): Promise<PrefetchResult> {
    while (this.unsettled(keys)) await this.settle(keys);
    const result: PrefetchResult = { moved: 0, alreadyThere: 0, missing: 0 };
    const items: { key: Key; from: SlotPlace }[] = [];
    const pinned: Key[] = [];
    for (const key of new Set(keys)) {
      const e = this.index.get(key);
      if (!e) {
        result.missing++;
        continue;
      }
      const top = this.index.topTier(key);
      if (top <= to) {
        result.alreadyThere++;
        continue;
      }
      this.index.pin(key);
      pinned.push(key);
      items.push({ key, from: this.place(top, e.slots[top]!) });
    }
    if (items.length === 0) return result;
    try {
      result.moved = await this.copyTo(items, to);
    } finally {
      for (const k of pinned) this.index.unpin(k);
    }
    result.missing += items.length - result.moved;
    return result;
  }

  // ------------------------------------------------------------------------------ pins, eviction

  /**
   * Leases the blocks against eviction for `ttlMs` (default 30 s), so a client that crashes cannot
   * pin them forever. Keys not cached are skipped.
   */
  pin(keys: KeyChain | readonly KeyLike[], options: { ttlMs?: number } = {}): Lease {
    this.assertOpen();
    this.expireLeases();
    const ttl = checkPinOptions(options, MAX_TIMER_MS).ttlMs ?? 30_000;
    const list = toKeys(keys);
    // A block an operation in flight is moving out of a tier (an eviction victim) cannot be
    // held any more; the lease lists only the keys it really holds.
    const held = list.filter((k) => {
      const e = this.index.get(k);
      if (!e || e.slots.some((slot, t) => slot !== ABSENT && (e.busy & (1 << t)) !== 0))
        return false;
      return this.index.pin(k);
    });
    const lease: Lease = { id: this.nextLease++, keys: held, expiresAt: this.now() + ttl };
    this.leases.set(lease.id, { lease, timer: this.leaseTimer(lease.id, ttl) });
    this.nextExpiry = Math.min(this.nextExpiry, lease.expiresAt);
    return lease;
  }

  /**
   * Leases expire by the warehouse's clock (`now`): operations that could evict or report pins
   * look first (expireLeases), and a timer looks too, so an idle warehouse lets them go. A timer
   * that fires before the clock says so (an injected clock) waits for the rest.
   */
  private leaseTimer(id: number, ms: number): NodeJS.Timeout {
    const timer = setTimeout(() => {
      this.expireLeases();
      const held = this.leases.get(id);
      if (held) {
        const left = held.lease.expiresAt - this.now();
        held.timer = this.leaseTimer(id, Math.min(Math.max(left, 1), MAX_TIMER_MS));
      }
    }, ms);
    timer.unref();
    return timer;
  }

  /** Ends every lease whose time has come by `now`. */
  private expireLeases(): void {
    if (this.leases.size === 0) return;
    const now = this.now();
    if (now < this.nextExpiry) return;
    let next = Infinity;
    for (const { lease } of [...this.leases.values()]) {
      if (lease.expiresAt <= now) this.unpin(lease);
      else next = Math.min(next, lease.expiresAt);
    }
    this.nextExpiry = next;
  }

  /** Ends a lease early. Idempotent. */
  unpin(lease: Lease): void {
    const id = leaseId(lease);
    const held = this.leases.get(id);
    if (!held) return;
    clearTimeout(held.timer);
    this.leases.delete(id);
    for (const k of held.lease.keys) this.index.unpin(k);
  }

  /**
   * Removes blocks from every tier (pinned ones stay). A file tier forgets them on disk too, so
   * they do not come back after a restart. Resolves with the number removed and each key's
   * status, so a caller (the peer server) need not look keys up before and after.
   */
  async evict(keys: KeyChain | readonly KeyLike[]): Promise<EvictResult> {
    this.assertOpen();
    this.expireLeases();
    const list = toKeys(keys);
    return this.track(this.evictNow(list));
  }

  private async evictNow(keys: Key[]): Promise<EvictResult> {
    while (this.unsettled(keys)) await this.settle(keys);
    const round = new TransferRound();
    const chosen: Key[] = [];
    for (const key of new Set(keys)) {
      const e = this.index.get(key);
      if (!e || e.pins > 0) continue;
      this.tiers.forEach((t, i) => {
        if (e.slots[i] !== ABSENT) t.forget?.(round.file, e.slots[i]!);
      });
      chosen.push(key);
    }
    // While the headers are forgotten on disk, the blocks are pinned (no put may take their
    // slots) and held (no other operation touches them).
    for (const key of chosen) this.index.pin(key);
    const held = this.hold();
    held.add(chosen);
    try {
      if (round.file.length > 0) (await this.fileEngine.submit(round.file)).throwIfFailed();
    } finally {
      for (const key of chosen) this.index.unpin(key);
      held.release();
    }
    const removed: Key[] = [];
    for (const key of chosen) {
      const e = this.index.get(key);
      if (!e || e.pins > 0) continue; // pinned meanwhile by a reader: it stays (until restart)
      this.index.remove(key);
      for (const t of this.index.tiers) t.stats.evictions++;
      removed.push(key);
    }
    this.changed([], removed);
    const gone = new Set(removed);
    const status = keys.map((key): EvictStatus => {
      if (gone.has(key)) return 'removed';
      return this.index.get(key) ? 'pinned' : 'absent';
    });
    return { removed: removed.length, status };
  }

  // -------------------------------------------------------------------------------- cluster

  /**
   * Calls `listener` after every operation that added keys to the warehouse or removed them
   * from its last tier (eviction, evict(), a corrupt copy dropped), so a cluster index can follow.
   * Returns the function that stops it.
   */
  watch(listener: ChangeListener): () => void {
    func(listener, 'listener');
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Every key held now, in any tier. */
  keys(): Key[] {
    const out: Key[] = [];
    for (const [key] of this.index) out.push(key);
    return out;
  }

  /** Where a local miss is looked for next (a cluster), or undefined for none. */
  setRemote(source: BlockSource | undefined): void {
    const fetch = guard('source', () => typeof (source as { fetch?: unknown } | null)?.fetch);
    if (source !== undefined && fetch !== 'function') {
      throw badArgument('source', 'a BlockSource (an object with fetch()) or undefined', source);
    }
    this.remote = source;
  }

  private changed(added: readonly Key[], removed: readonly Key[]): void {
    if (this.listeners.size === 0 || (added.length === 0 && removed.length === 0)) return;
    for (const l of this.listeners) {
      try {
        l(added, removed);
      } catch {
        // A listener's bug must not fail the operation that already changed the store.
      }
    }
  }

  /** Victims of a committed plan that left the warehouse entirely. */
  private evictedBy(plan: Plan<Key>, out: Key[]): void {
    if (this.listeners.size === 0) return;
    for (const m of plan.moves) {
      if (m.toTier === ABSENT && !this.index.get(m.key)) out.push(m.key);
    }
  }

  /**
   * After a local miss: asks the remote source for the blocks still missing, then keeps what it
   * delivered in the top tier (as a put would), unless promotion is off.
   */
  private async fetchRemote(
    keys: Key[],
    dst: Target,
    found: boolean[],
    tiers: number[],
    keep: boolean,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const missing: number[] = [];
    const seen = new Set<Key>();
    for (let i = 0; i < keys.length; i++) {
      if (!found[i] && !seen.has(keys[i]!)) {
        seen.add(keys[i]!);
        missing.push(i);
      }
    }
    if (missing.length === 0) return;
    const got = await this.remote!.fetch(
      missing.map((i) => keys[i]!),
      dst,
      missing,
      signal,
    );
    const fetched: number[] = [];
    missing.forEach((i, j) => {
      if (got[j] !== true) return;
      fetched.push(i);
      this.counters.remoteHits++;
    });
    // Reported one past the last local tier (and past the peer tier, when there is one).
    const remoteTier = this.tiers.length + (this.peer ? 1 : 0);
    // A key named twice in one get is filled once from the remote and copied to its twin.
    for (let i = 0; i < keys.length; i++) {
      if (found[i]) continue;
      const first = missing.find((m) => keys[m] === keys[i]);
      if (first === undefined || !fetched.includes(first)) continue;
      if (first !== i) await this.copyWithin(dst, first, i);
      found[i] = true;
      tiers[i] = remoteTier;
    }
    if (!keep || fetched.length === 0) return;
    const fetchedKeys = fetched.map((i) => keys[i]!);
    while (this.unsettled(fetchedKeys)) await this.settle(fetchedKeys);
    const fresh = fetched.filter((i) => !this.index.get(keys[i]!));
    if (fresh.length > 0) await this.storeBlocks(keys, fresh, dst, 0, this.writeThroughDefault);
  }

  private async copyWithin(dst: Target, from: number, to: number): Promise<void> {
    const round = new TransferRound();
    const bs = this.blockBytes;
    round.move(
      { kind: 'memory', target: dst, offset: from * bs },
      { kind: 'memory', target: dst, offset: to * bs },
      bs,
    );
    await round.run(this.memoryEngine, this.fileEngine, this.gpuCopy);
  }

  // -------------------------------------------------------------------------------- stats, close

  /**
   * On a clean close, writes blocks that live only in the top tier down to the file tier (making
   * room there as eviction would), so a restart finds them: with write-back, the hottest blocks
   * are exactly the ones never evicted, and they would otherwise be lost on every restart.
   * Returns the keys it could not write down, and why.
   */
  private async flushDown(): Promise<{ unwritten: Key[]; errors: unknown[] }> {
    const unwritten: Key[] = [];
    const errors: KvtierError[] = [];
    const last = this.tiers.length - 1;
    if (last === 0 || !this.tiers[last]!.scan) return { unwritten, errors };
    const items: { key: Key; from: SlotPlace }[] = [];
    for (const [key, e] of this.index) {
      if (e.slots[last] !== ABSENT) continue;
      // Whatever is not on the durable tier yet is lost at a restart: write its copy in host
      // memory where there is one (GPU copies go through host staging).
      const tiers = e.slots.flatMap((slot, t) => (t < last && slot !== ABSENT ? [t] : []));
      const t = tiers.find((x) => this.tiers[x]!.kind === 'host') ?? tiers[0];
      if (t !== undefined) items.push({ key, from: this.place(t, e.slots[t]!) });
    }
    for (let i = 0; i < items.length; i += FLUSH_BATCH) {
      const batch = items.slice(i, i + FLUSH_BATCH);
      // One batch failing whole (a refused round) must not stop the others from being saved.
      await this.copyTo(batch, last, errors).catch((e: unknown) => errors.push(e as KvtierError));
      for (const { key } of batch) {
        if (this.index.get(key)?.slots[last] === ABSENT) unwritten.push(key);
      }
    }
    return { unwritten, errors };
  }

  stats(): WarehouseStats {
    this.expireLeases();
    const { gets, hits, misses, corrupt, ioErrors, remoteHits } = this.counters;
    const cluster = this.remote?.stats?.();
    return {
      blockBytes: this.blockBytes,
      blocks: this.index.size,
      gets,
      hits,
      misses,
      hitRate: hits + misses === 0 ? 0 : hits / (hits + misses),
      corrupt,
      ioErrors,
      remoteHits,
      ...(cluster ? { cluster } : {}),
      tiers: this.tiers
        .map((t, i): TierStats => {
          const a = this.index.tiers[i]!;
          return {
            name: t.name,
            kind: t.kind,
            capacityBlocks: t.slots,
            usedBlocks: a.used,
            hits: a.stats.hits,
            misses: a.stats.misses,
            evictions: a.stats.evictions,
            promotions: a.stats.promotions,
            demotions: a.stats.demotions,
            ...this.extra[i]!,
          };
        })
        .concat(this.peer ? [this.peerStats(this.peer)] : []),
    };
  }

  private peerStats(peer: PeerTier): TierStats {
    const s = peer.stats;
    return {
      name: peer.name,
      kind: 'peer',
      capacityBlocks: 0, // the peer's own; ask it
      usedBlocks: 0,
      hits: s.hits,
      misses: s.misses,
      evictions: 0,
      promotions: 0,
      demotions: 0,
      bytesIn: s.bytesIn,
      bytesOut: s.bytesOut,
      corrupt: 0,
      errors: s.errors,
    };
  }

  /**
   * Lets every put, get, prefetch and eviction in flight finish (queued prefetches are dropped),
   * makes the file tier durable, then frees memory, closes files and releases the directory lock.
   * All of that happens even when a step fails. When blocks held only in faster tiers could not be
   * written down to the file tier (a full disk, say), close rejects afterwards with a CloseError
   * naming them: they are lost.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      let unwritten: Key[] = [];
      const errors: unknown[] = [];
      try {
        this.prefetcher.cancelQueued();
        while (this.operations.size > 0) await Promise.allSettled([...this.operations]);
        for (const { timer } of this.leases.values()) clearTimeout(timer);
        this.leases.clear();
        const flushed = await this.flushDown();
        unwritten = flushed.unwritten;
        errors.push(...flushed.errors);
        const sync = new TransferRound();
        for (const t of this.tiers) t.sync?.(sync.file);
        if (sync.file.length > 0 && !(await this.fileEngine.submit(sync.file)).ok) {
          this.counters.ioErrors++;
        }
      } catch (e) {
        errors.push(e);
      } finally {
        await Promise.allSettled(this.tiers.map((t) => t.close()));
        await Promise.allSettled([this.peer?.close()]);
        await Promise.allSettled([
          this.fileEngine.close(),
          this.memoryEngine.close(),
          this.gpuCopy?.close(),
        ]);
      }
      if (unwritten.length > 0 || errors.length > 0) throw closeError(unwritten, errors);
    })();
    return this.closing;
  }
}

const FLUSH_BATCH = 64;

/** close()'s error: `unwritten` names the blocks it could not write down (lost). */
export interface CloseError extends KvtierError {
  readonly unwritten: Key[];
}

function closeError(unwritten: Key[], errors: unknown[]): CloseError {
  const first = errors.find((e): e is KvtierError => e instanceof KvtierError);
  const noSpace = errors.some((e) => e instanceof KvtierError && e.code === 'KVTIER_NO_SPACE');
  const shown = unwritten.slice(0, 4).join(', ');
  const more = unwritten.length > 4 ? ` and ${unwritten.length - 4} more` : '';
  const why =
    errors.length > 0
      ? String((errors[0] as Error)?.message ?? errors[0])
      : 'no free slot in the file tier';
  const message =
    unwritten.length > 0
      ? `close could not write ${unwritten.length} block(s) down to the file tier, which are lost: ${shown}${more} (${why})`
      : `close failed part way (${why}); files are closed and the directory released`;
  const err = new KvtierError(noSpace ? 'KVTIER_NO_SPACE' : (first?.code ?? 'KVTIER_IO'), message, {
    ...(first?.errno !== undefined ? { errno: first.errno } : {}),
    ...(first?.syscall !== undefined ? { syscall: first.syscall } : {}),
    cause: errors[0],
  });
  return Object.assign(err, { unwritten });
}
/** setTimeout's longest delay; longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function resolvePolicy(policy: PolicyOption): <K>(capacity: number) => EvictionPolicy<K> {
  if (typeof policy === 'function') return policy;
  if (typeof policy !== 'string') {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'policy must be a policy name or a factory');
  }
  if (isOffline(policy)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `policy ${policy} needs the future; only kvtier sim can run it`,
    );
  }
  policyByName(policy, 1); // refuses unknown names now, before anything is opened
  return <K>(capacity: number) => policyByName<K>(policy, capacity);
}
