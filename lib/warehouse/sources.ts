/**
 * Block sources: where a local miss is looked for next, and where puts are written through. Two
 * kinds attach here, both behind one interface (BlockSource):
 *
 * - source tiers, opened from a tier description of a kind a layer above registered
 *   (registerSourceKind: the peer layer registers 'peer' in lib/peer/peer-source.ts), listed in
 *   stats().tiers after the local tiers and reported as tier `local tiers + n` by get();
 * - the remote source of a cluster (setRemote), consulted last, reported one past the source
 *   tiers, counted in stats().remoteHits, and skipped by get({ remote: false }).
 *
 * One routine fills misses from them in that order (fill()); the Warehouse never names a kind.
 */
import { hostBytes } from '../core/bytes.js';
import type { Target } from '../core/engine.js';
import { abortError, KvtierError } from '../core/errors.js';
import { badArgument, guard } from '../core/validate.js';
import type { Key } from '../keys/keys.js';
import type {
  BlockSource,
  ClusterStats,
  SourceTier,
  SourceTierOptions,
  TierStats,
} from './types.js';

/** How a layer above makes its tier kind: reads a description, opens a source from it. */
export interface SourceKindDefinition {
  /** Reads and checks a tier description of this kind (`name` names it in errors). */
  check(given: unknown, name: string): SourceTierOptions;
  open(options: SourceTierOptions, blockBytes: number): Promise<SourceTier>;
}

const kinds = new Map<string, SourceKindDefinition>();

/** Registers a tier kind served by a block source (at module load of the layer that has it). */
export function registerSourceKind(kind: string, definition: SourceKindDefinition): void {
  if (kind === 'gpu' || kind === 'host' || kind === 'file') {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `tier kind ${kind} is a local tier`);
  }
  kinds.set(kind, definition);
}

/** The registered definition of `kind`; KVTIER_BAD_ARGUMENT naming it when there is none. */
export function sourceKind(kind: unknown, name: string): SourceKindDefinition {
  const found = typeof kind === 'string' ? kinds.get(kind) : undefined;
  if (!found) {
    const known = ['gpu', 'host', 'file', ...kinds.keys()].map((k) => `'${k}'`).join(', ');
    throw badArgument(
      name,
      `one of ${known} (a source kind is registered by its layer: import kvtier's index)`,
      kind,
    );
  }
  return found;
}

/** Whether a value has the shape of a BlockSource. */
export function checkSource(source: unknown, name: string): BlockSource {
  const fetch = guard(name, () => typeof (source as { fetch?: unknown } | null)?.fetch);
  if (fetch !== 'function') {
    throw badArgument(name, 'a BlockSource (an object with fetch())', source);
  }
  return source as BlockSource;
}

export interface FillResult {
  /** Indexes of keys filled from a source (first mentions only; twins are copied, not listed). */
  fetched: number[];
}

export class Sources {
  private remote: BlockSource | undefined;

  constructor(
    /** Source tiers, in tier order after the local ones. */
    private readonly tiers: readonly SourceTier[],
    private readonly blockBytes: number,
    /** The tier number of the first source tier: the number of local tiers. */
    private readonly first: number,
    /** Counts blocks the cluster served. */
    private readonly remoteHit: (n: number) => void,
  ) {}

  /** Whether a put has a copy to write through (a source tier that is a sink). */
  get sinks(): boolean {
    return this.tiers.some((s) => s.store !== undefined);
  }

  /** Whether any source tier is attached (writing bytes in place cannot write through). */
  get hasTiers(): boolean {
    return this.tiers.length > 0;
  }

  /** Whether fill() has anything to ask (`remote`: the cluster may be asked). */
  any(remote: boolean): boolean {
    return this.tiers.length > 0 || (remote && this.remote !== undefined);
  }

  setRemote(source: BlockSource | undefined): void {
    this.remote = source === undefined ? undefined : checkSource(source, 'source');
  }

  /** Writes blocks `at` of src through to every sink; never rejects. */
  store(keys: readonly Key[], at: readonly number[], src: Target): Promise<unknown> | undefined {
    if (at.length === 0 || !this.sinks) return undefined;
    const list = at.map((i) => keys[i]!);
    return Promise.all(this.tiers.flatMap((s) => (s.store ? [s.store(list, src, at)] : [])));
  }

  /**
   * Fills the keys `found` does not mark from the sources in order (source tiers, then the
   * cluster unless `remote` is false): each asked only for the first mention of each key still
   * missing. A key named twice is fetched once and copied to its twin. Marks `found` and `tiers`.
   */
  async fill(
    keys: readonly Key[],
    dst: Target,
    found: boolean[],
    tiers: number[],
    signal: AbortSignal | undefined,
    remote: boolean,
  ): Promise<FillResult> {
    const fetched: number[] = [];
    const list: BlockSource[] =
      remote && this.remote ? [...this.tiers, this.remote] : [...this.tiers];
    for (let s = 0; s < list.length; s++) {
      if (signal?.aborted) throw abortError(signal);
      const missing = firstMisses(keys, found);
      if (missing.length === 0) break;
      const source = list[s]!;
      const got = await source.fetch(
        missing.map((i) => keys[i]!),
        dst,
        missing,
        signal,
      );
      const tier = this.first + s;
      const firsts = new Map<Key, number>();
      missing.forEach((i, j) => {
        if (got[j] !== true) return;
        firsts.set(keys[i]!, i);
        fetched.push(i);
        found[i] = true;
        tiers[i] = tier;
      });
      if (source === this.remote && firsts.size > 0) this.remoteHit(firsts.size);
      for (let i = 0; i < keys.length && firsts.size > 0; i++) {
        if (found[i]) continue;
        const first = firsts.get(keys[i]!);
        if (first === undefined) continue;
        copyBlock(dst, first, i, this.blockBytes);
        found[i] = true;
        tiers[i] = tier;
      }
    }
    if (list.length > 0 && signal?.aborted) throw abortError(signal);
    return { fetched };
  }

  tierStats(): TierStats[] {
    return this.tiers.map((s) => s.tierStats());
  }

  clusterStats(): ClusterStats | undefined {
    return this.remote?.stats?.();
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.tiers.map((s) => s.close()));
  }
}

/** Indexes of the first mention of each key not found yet. */
function firstMisses(keys: readonly Key[], found: readonly boolean[]): number[] {
  const missing: number[] = [];
  const seen = new Set<Key>();
  for (let i = 0; i < keys.length; i++) {
    if (!found[i] && !seen.has(keys[i]!)) {
      seen.add(keys[i]!);
      missing.push(i);
    }
  }
  return missing;
}

/** Copies block `from` of dst to block `to` (dst is host memory: get refuses GPU memory). */
function copyBlock(dst: Target, from: number, to: number, bs: number): void {
  hostBytes(dst, to * bs, bs).set(hostBytes(dst, from * bs, bs));
}
