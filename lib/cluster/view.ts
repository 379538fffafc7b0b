/**
 * The cluster as a reader sees it: the live nodes (cached briefly), which of them hold how much
 * of a chain, and a ranking for routers. `connectCluster()` opens one for a router or for
 * `kvtier cluster status`; a node in the cluster uses one to find peers.
 */
import { KvtierError } from '../core/errors.js';
import { boolean, finite, instance, options as readOptions } from '../core/validate.js';
import { KeyChain, toKeys, type Key, type KeyLike } from '../keys/keys.js';
import { RedisIndex, type NodeRecord, type RedisIndexOptions } from './redis-index.js';

export interface RankOptions {
  /**
   * Only these node ids (the engines a router fronts); default every live node. Ids that are
   * not live (never joined, or their lease ran out) are left out of the answer.
   */
  nodes?: readonly string[];
  /**
   * The router's own load per node id (say, requests in flight), which breaks ties between
   * equal prefixes; nodes without an entry use the load they report themselves.
   */
  load?: Readonly<Record<string, number>>;
}

export interface RankedNode {
  id: string;
  address: string;
  /** Leading keys of the chain the node holds. */
  prefix: number;
  load: number;
  capacityBytes: number;
  usedBytes: number;
}

export interface ClusterStatus {
  redis: string;
  mode: 'standalone' | 'cluster';
  nodes: NodeStatus[];
}

export interface NodeStatus extends NodeRecord {
  /**
   * 'ok'; 'degraded' when the node missed renewals: it cannot reach Redis (it still serves from
   * its own tiers, and resynchronises when it can), or it is dying and its lease runs out.
   */
  state: 'ok' | 'degraded';
}

export interface ClusterViewOptions extends RedisIndexOptions {
  /** How long a list of live nodes is reused before the registry is read again (default 1 s). */
  refreshMs?: number;
}

export class ClusterView {
  readonly index: RedisIndex;
  private readonly refreshMs: number;
  private readonly ownsIndex: boolean;
  private cached: { at: number; nodes: NodeRecord[] } | undefined;

  constructor(index: RedisIndex, given: { refreshMs?: number; ownsIndex?: boolean } = {}) {
    instance(index, 'index', RedisIndex, 'a RedisIndex (RedisIndex.open())');
    const options = readOptions<{ refreshMs?: number; ownsIndex?: boolean }>(given, 'options', [
      'refreshMs',
      'ownsIndex',
    ]);
    if (options.refreshMs !== undefined) finite(options.refreshMs, 'options.refreshMs', { min: 0 });
    if (options.ownsIndex !== undefined) boolean(options.ownsIndex, 'options.ownsIndex');
    this.index = index;
    this.refreshMs = options.refreshMs ?? 1000;
    this.ownsIndex = options.ownsIndex ?? false;
  }

  /** Live nodes running this kvtier's index format, from a list at most refreshMs old. */
  async liveNodes(): Promise<NodeRecord[]> {
    const now = Date.now();
    if (!this.cached || now - this.cached.at >= this.refreshMs) {
      this.cached = { at: now, nodes: (await this.index.nodes()).filter((n) => n.compatible) };
    }
    return this.cached.nodes;
  }

  /** Forgets the cached list: the next question reads the registry. */
  invalidate(): void {
    this.cached = undefined;
  }

  /**
   * Who holds how much of the chain: nodes with a prefix of at least one key, longest first.
   * A node whose lease ran out since the list was cached is left out by the lookup itself.
   */
  async holders(keys: readonly Key[], among?: readonly string[]): Promise<RankedNode[]> {
    const live = await this.liveNodes();
    const pool = among ? live.filter((n) => among.includes(n.id)) : live;
    const prefixes = await this.index.lookup(
      keys,
      pool.map((n) => n.id),
    );
    return pool
      .filter((n) => prefixes.has(n.id))
      .map((n) => ranked(n, prefixes.get(n.id)!))
      .filter((n) => n.prefix > 0)
      .sort((a, b) => b.prefix - a.prefix || a.load - b.load || a.id.localeCompare(b.id));
  }

  /**
   * Ranks nodes for a request whose prompt has these keys: longest cached prefix first; equal
   * prefixes by lower load (the router's, else the node's own), then by lower fill, then by id,
   * so the order is deterministic.
   */
  async rank(
    keys: KeyChain | readonly KeyLike[],
    options: RankOptions = {},
  ): Promise<RankedNode[]> {
    const list = toKeys(keys);
    if (options.nodes !== undefined && !Array.isArray(options.nodes)) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', 'rank: nodes must be an array of node ids');
    }
    const live = await this.liveNodes();
    const pool = options.nodes ? live.filter((n) => options.nodes!.includes(n.id)) : live;
    const prefixes =
      list.length === 0
        ? new Map(pool.map((n) => [n.id, 0]))
        : await this.index.lookup(
            list,
            pool.map((n) => n.id),
          );
    const load = options.load ?? {};
    return pool
      .filter((n) => prefixes.has(n.id))
      .map((n) => {
        const r = ranked(n, prefixes.get(n.id)!);
        const own = load[n.id];
        if (typeof own === 'number' && Number.isFinite(own)) r.load = own;
        return r;
      })
      .sort(
        (a, b) =>
          b.prefix - a.prefix ||
          a.load - b.load ||
          fill(a) - fill(b) ||
          (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
      );
  }

  /** Every registered node with a live lease, foreign formats included. */
  async status(): Promise<ClusterStatus> {
    const nodes = await this.index.nodes();
    return {
      redis: this.index.display,
      mode: this.index.mode,
      nodes: nodes.map((n) => ({
        ...n,
        // Renewals come every third of a lease; missing two means trouble on the node's side.
        state: n.leaseAgeMs > (n.leaseMs * 2) / 3 ? 'degraded' : 'ok',
      })),
    };
  }

  async close(): Promise<void> {
    if (this.ownsIndex) await this.index.close();
  }
}

function ranked(n: NodeRecord, prefix: number): RankedNode {
  return {
    id: n.id,
    address: n.address,
    prefix,
    load: n.load,
    capacityBytes: n.capacityBytes,
    usedBytes: n.usedBytes,
  };
}

function fill(n: RankedNode): number {
  return n.capacityBytes > 0 ? n.usedBytes / n.capacityBytes : 0;
}

/** Opens a read-only view of the cluster whose index lives at `url`. */
export async function connectCluster(
  url: string,
  options: ClusterViewOptions = {},
): Promise<ClusterView> {
  const index = await RedisIndex.open(url, options);
  return new ClusterView(index, {
    ...(options.refreshMs !== undefined ? { refreshMs: options.refreshMs } : {}),
    ownsIndex: true,
  });
}
