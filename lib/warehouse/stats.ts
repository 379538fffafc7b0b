/**
 * The Warehouse's counters and the assembly of stats(): operation counters, per-tier byte counts
 * kept beside the BlockIndex's own per-tier counters, and the source tiers' and cluster's reports.
 */
import type { Key } from '../keys/keys.js';
import type { BlockIndex } from './block-index.js';
import type { Sources } from './sources.js';
import type { Tier } from './tier.js';
import type { TierStats, WarehouseStats } from './types.js';

export interface Counters {
  gets: number;
  hits: number;
  misses: number;
  corrupt: number;
  ioErrors: number;
  /** Blocks served by the cluster (setRemote) after a local miss. */
  remoteHits: number;
}

/** What the Warehouse counts per local tier beyond the index's counters. */
export interface TierBytes {
  bytesIn: number;
  bytesOut: number;
  corrupt: number;
  ioErrors: number;
}

export class StatsBook {
  readonly counters: Counters = {
    gets: 0,
    hits: 0,
    misses: 0,
    corrupt: 0,
    ioErrors: 0,
    remoteHits: 0,
  };
  /** Per local tier, in tier order. */
  readonly tiers: TierBytes[];

  constructor(tiers: number) {
    this.tiers = Array.from({ length: tiers }, () => ({
      bytesIn: 0,
      bytesOut: 0,
      corrupt: 0,
      ioErrors: 0,
    }));
  }

  /** A block of tier `t` failed its checksum. */
  corrupt(t: number, n = 1): void {
    this.tiers[t]!.corrupt += n;
    this.counters.corrupt += n;
  }

  /**
   * An I/O operation failed; `t` is the tier whose read or write it was (the destination of a
   * copy, since writes are what fail in practice: a full disk), when one is known.
   */
  ioError(t: number | undefined): void {
    this.counters.ioErrors++;
    if (t !== undefined && t >= 0) {
      const tier = this.tiers[t];
      if (tier) tier.ioErrors++;
    }
  }

  report(
    blockBytes: number,
    index: BlockIndex<Key>,
    tiers: readonly Tier[],
    sources: Sources,
  ): WarehouseStats {
    const { gets, hits, misses, corrupt, ioErrors, remoteHits } = this.counters;
    const cluster = sources.clusterStats();
    return {
      blockBytes,
      blocks: index.size,
      gets,
      hits,
      misses,
      hitRate: hits + misses === 0 ? 0 : hits / (hits + misses),
      corrupt,
      ioErrors,
      remoteHits,
      ...(cluster ? { cluster } : {}),
      tiers: tiers
        .map((t, i): TierStats => {
          const a = index.tiers[i]!;
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
            ...this.tiers[i]!,
            codec: t.codec?.spec ?? 'none',
            storedBlockBytes: t.codec?.storedBlockBytes ?? blockBytes,
          };
        })
        .concat(sources.tierStats()),
    };
  }
}
