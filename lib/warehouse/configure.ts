/**
 * Opening a Warehouse's parts from its options: the tier order and capacities checked, the policy
 * resolved, the engines created, the local tiers and the source tiers (registered kinds) opened,
 * the index restored from what the file tier holds. A failure closes whatever was opened.
 */
import { createEngine, type IoEngine } from '../core/engine.js';
import { KvtierError } from '../core/errors.js';
import { DeviceRegion } from '../core/gpu/device-region.js';
import { createCopyEngine } from '../core/gpu/engines.js';
import { InFlight } from '../core/inflight.js';
import type { Key } from '../keys/keys.js';
import { DEFAULT_POLICY, isOffline, policyByName } from '../policy/index.js';
import type { PolicyFactory } from '../policy/policy.js';
import { ABSENT, BlockIndex } from './block-index.js';
import { ChangeFeed } from './changes.js';
import { FileTier, type Durability } from './file-tier.js';
import { GpuTier } from './gpu-tier.js';
import { HostTier } from './host-tier.js';
import { KeyLocks } from './key-locks.js';
import { Leases } from './leases.js';
import { checkWarehouseOptions } from './options.js';
import { Placement, type PlacementEnv } from './placement.js';
import { PrefetchQueue } from './prefetch.js';
import { sourceKind, Sources } from './sources.js';
import { Staging } from './staging.js';
import { StatsBook } from './stats.js';
import type { TenantOwners } from './tenant-quotas.js';
import type { Tier } from './tier.js';
import { openTierCodec } from './tier-codec.js';
import type {
  LocalTierOptions,
  PolicyOption,
  SourceTier,
  SourceTierOptions,
  TierOptions,
  WarehouseOptions,
} from './types.js';

const MEMORY_THREADS = 2;

/** Everything a Warehouse is made of; its modules work on these. */
export interface Parts extends PlacementEnv {
  readonly blockBytes: number;
  readonly placement: Placement;
  readonly sources: Sources;
  readonly leases: Leases;
  readonly prefetcher: PrefetchQueue;
  readonly durability: Durability;
  readonly promote: boolean;
  readonly writeThrough: boolean;
  /** Predictive prefetch (option predictivePrefetch), when asked for. */
  readonly staging: Staging | undefined;
}

export function isLocal(t: TierOptions): t is LocalTierOptions {
  const kind: string = t.kind;
  return kind === 'gpu' || kind === 'host' || kind === 'file';
}

/** The tier a durable copy lives in (the file tier, last), or ABSENT. */
export function persistTier(parts: Parts): number {
  const last = parts.tiers.length - 1;
  const t = parts.tiers[last]!;
  return t.scan && t.sync ? last : ABSENT;
}

/** The tier whose copy a put under durability 'sync' must land in, or ABSENT. */
export function durableTier(parts: Parts): number {
  if (parts.durability !== 'sync') return ABSENT;
  const last = parts.tiers.length - 1;
  return parts.tiers[last]!.durable ? last : ABSENT;
}

/** `owners`: the tenants' quotas (tenants.ts), which wrap each tier's policy. */
export async function openParts(given: WarehouseOptions, owners?: TenantOwners): Promise<Parts> {
  const options = checkWarehouseOptions(given);
  const { blockBytes } = options;
  const locals = options.tiers.filter(isLocal);
  const remotes = options.tiers.filter((t): t is SourceTierOptions => !isLocal(t));
  checkOrder(options.tiers);
  checkCapacities(locals, blockBytes);
  const policy = resolvePolicy(options.policy ?? DEFAULT_POLICY);
  const durability = options.durability ?? 'none';

  const fileEngine = createEngine(options.engine ?? {});
  const memoryEngine = createEngine({ kind: 'threads', queueDepth: MEMORY_THREADS });
  const tiers: Tier[] = [];
  const sourceTiers: SourceTier[] = [];
  let gpuCopy: IoEngine | undefined;
  try {
    const gpu = locals.find((t) => t.kind === 'gpu');
    if (gpu) {
      // Moves between files and the GPU tier go through host staging (to be checksummed), so
      // the copy engine is all a GPU tier needs.
      gpuCopy = createCopyEngine({ device: gpu.region?.device ?? gpu.device ?? 0 });
    }
    for (const t of locals) tiers.push(await openTier(t, blockBytes, durability, fileEngine));
    for (const t of remotes) {
      sourceTiers.push(await sourceKind(t.kind, 'tier kind').open(t, blockBytes));
    }
    const now = options.now ?? Date.now;
    const staging = options.predictivePrefetch
      ? new Staging(options.predictivePrefetch)
      : undefined;
    owners?.bind(tiers);
    const index = new BlockIndex<Key>(
      tiers.map((t, i) => {
        const p = owners ? owners.policy(i, policy, t.slots) : policy<Key>(t.slots, i);
        return { name: t.name, capacity: t.slots, policy: staging ? staging.wrap(p, i) : p };
      }),
      owners ? { owners } : {},
    );
    owners?.attach(index);
    const stats = new StatsBook(tiers.length);
    const env: PlacementEnv = {
      index,
      tiers,
      memoryEngine,
      fileEngine,
      gpuCopy,
      stats,
      feed: new ChangeFeed(index),
      locks: new KeyLocks(),
      inflight: new InFlight(),
      now,
    };
    const parts: Parts = {
      ...env,
      blockBytes,
      placement: new Placement(env),
      sources: new Sources(sourceTiers, blockBytes, tiers.length, (n) => {
        stats.counters.remoteHits += n;
      }),
      leases: new Leases(index, now),
      prefetcher: new PrefetchQueue(options.prefetchBytes ?? 64 * blockBytes, now),
      durability,
      promote: options.promote ?? true,
      writeThrough: options.writeThrough ?? false,
      staging,
    };
    await restore(parts);
    staging?.start(parts);
    return parts;
  } catch (e) {
    await Promise.allSettled([...tiers, ...sourceTiers].map((t) => t.close()));
    await Promise.allSettled([fileEngine.close(), memoryEngine.close(), gpuCopy?.close()]);
    throw e;
  }
}

function checkOrder(tiers: readonly TierOptions[]): void {
  if (tiers.length === 0) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'a warehouse needs at least one tier');
  }
  const kinds = tiers.map((t) => (isLocal(t) ? t.kind : 'peer'));
  const order = tiers.map((t) => t.kind).join(',');
  const local = kinds
    .join(',')
    .replace(/,peer$/, '')
    .replace(/^peer$/, '');
  const locals = ['host', 'file', 'host,file'];
  const allowed = [...locals, 'gpu', ...locals.map((o) => `gpu,${o}`)];
  if (!allowed.includes(local)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `tiers must be some of gpu, host and file, in that order (fastest first), optionally followed by one peer, got [${order}]`,
    );
  }
}

function checkCapacities(tiers: readonly LocalTierOptions[], blockBytes: number): void {
  for (const t of tiers) {
    // Encoded blocks are smaller: FileTier.open counts them, and refuses room for none.
    if (t.kind === 'file' && t.codec !== undefined) continue;
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
}

async function openTier(
  t: LocalTierOptions,
  blockBytes: number,
  durability: Durability,
  engine: IoEngine,
): Promise<Tier> {
  if (t.kind === 'gpu') {
    const name = t.name ?? 'gpu';
    if (t.region !== undefined && t.layout !== undefined) {
      return GpuTier.paged(name, t.region, t.layout, blockBytes, t.blocks);
    }
    if (t.region !== undefined) {
      const slots = t.bytes === undefined ? undefined : Math.floor(t.bytes / blockBytes);
      return GpuTier.over(name, t.region, blockBytes, slots);
    }
    return GpuTier.allocate(name, Math.floor(t.bytes / blockBytes), blockBytes, t.device ?? 0);
  }
  if (t.kind === 'host') {
    return new HostTier(t.name ?? 'host', Math.floor(t.bytes / blockBytes), blockBytes);
  }
  const name = t.name ?? 'file';
  const codec = t.codec ? openTierCodec(t.codec, blockBytes, name) : undefined;
  // A tier of N bytes holds N / (bytes per stored block) blocks: the point of a codec.
  const slots = Math.floor(t.bytes / (codec?.encodedBytes ?? blockBytes));
  return FileTier.open({ name, dir: t.dir, slots, blockBytes, durability, engine, codec });
}

/** Rebuilds the index from what the file tier already holds. */
async function restore(parts: Parts): Promise<void> {
  const { tiers, index, stats, placement } = parts;
  for (let t = 0; t < tiers.length; t++) {
    const tier = tiers[t]!;
    if (!tier.scan) continue;
    const { blocks, corrupt } = await tier.scan();
    stats.corrupt(t, corrupt);
    blocks.sort((a, b) => a.generation - b.generation); // oldest first, so LRU order survives
    for (const b of blocks) index.restore(b.key, t, b.slot, b, placement.info(0, 0, 1));
    index.rebuildFreeSlots(t);
  }
}

function resolvePolicy(policy: PolicyOption): PolicyFactory {
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
  return <K>(capacity: number, tier?: number) => policyByName<K>(policy, capacity, tier);
}
