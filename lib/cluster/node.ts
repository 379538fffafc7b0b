/**
 * A warehouse in a cluster: publishes the keys it holds to the global index (batched, under a
 * lease it renews), removes them as they leave, and on a local miss fetches from the peer that
 * holds the longest prefix. Redis going away never stops the warehouse: the node reports
 * 'degraded', keeps serving from its own tiers, and resynchronises its whole entry set when
 * Redis is back.
 */
import { randomBytes } from 'node:crypto';

import type { Target } from '../core/engine.js';
import { isKvtierError, KvtierError } from '../core/errors.js';
import { badArgument, describe, options as readOptions } from '../core/validate.js';
import type { Key } from '../keys/keys.js';
import type { BlockSource, ClusterStats } from '../warehouse/types.js';
import type { Warehouse } from '../warehouse/warehouse.js';
import { RedisIndex, type NodeFacts, type RedisIndexOptions } from './redis-index.js';
import { checkNodeId } from './schema.js';
import { ClusterView } from './view.js';

/**
 * Fetches blocks from the warehouse of the node at `address` (HOST:PORT): writes keys[j]'s block
 * into block at[j] of dst where the peer has it; per key, whether it did. A block the peer no
 * longer holds is false, not an error; a peer that cannot be reached rejects. The peer must
 * answer from its own tiers only (no second hop through the cluster).
 */
export type PeerFetch = (
  address: string,
  keys: readonly Key[],
  dst: Target,
  at: readonly number[],
  signal?: AbortSignal,
) => Promise<boolean[]>;

export interface JoinOptions extends RedisIndexOptions {
  /** redis:// or rediss:// URL of the index (a single server or any Redis Cluster node). */
  redis: string;
  /** This node's name in the cluster: unique among live nodes. */
  nodeId: string;
  /** HOST:PORT where peers reach this node's warehouse. */
  advertise: string;
  /** Entries vanish this long after the node stops renewing them (default 10 s). */
  leaseMs?: number;
  /** How this node fetches from peers on a local miss; without it, misses stay local. */
  fetch?: PeerFetch;
  /** How long a list of live nodes is reused (default 1 s). */
  refreshMs?: number;
}

export type NodeState = 'ok' | 'degraded' | 'resyncing' | 'conflict' | 'closed';

export interface NodeStats extends ClusterStats {
  nodeId: string;
  address: string;
  state: NodeState;
  /** Why the node is degraded, while it is. */
  reason?: string;
  /** Keys added to and removed from the index since the node joined (resyncs not counted). */
  published: number;
  unpublished: number;
  resyncs: number;
  /** Blocks fetched from peers, and blocks the index promised that a peer no longer had. */
  peerHits: number;
  staleEntries: number;
  peerErrors: number;
}

const MIN_LEASE_MS = 300;
/** Keys waiting to be published before a flush is forced (else the next turn of the loop). */
const FLUSH_KEYS = 4096;
/** Peers tried per fetch, best first, before the rest is given up as a miss. */
const FETCH_TRIES = 3;
/** Index lookups per fetch: each continues where the peers before it stopped delivering. */
const FETCH_ROUNDS = 4;

export class ClusterNode implements BlockSource {
  readonly id: string;
  readonly address: string;
  readonly leaseMs: number;
  readonly view: ClusterView;
  private readonly index: RedisIndex;
  private readonly warehouse: Warehouse;
  private readonly instance = randomBytes(12).toString('hex');
  private readonly peerFetch: PeerFetch | undefined;
  private readonly log: (m: string) => void;
  private state: NodeState = 'resyncing';
  private reason: string | undefined;
  /** Changes since the last flush: key → true (added) or false (removed); the last one wins. */
  private pending = new Map<Key, boolean>();
  private flushScheduled = false;
  /** Redis work, one piece at a time, in order. */
  private queue: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private unwatch: (() => void) | undefined;
  private attached = false;
  private lastGets = 0;
  private lastTick = Date.now();
  private load = 0;
  private counters = {
    published: 0,
    unpublished: 0,
    resyncs: 0,
    peerHits: 0,
    staleEntries: 0,
    peerErrors: 0,
  };

  private constructor(warehouse: Warehouse, index: RedisIndex, o: JoinOptions, leaseMs: number) {
    this.warehouse = warehouse;
    this.index = index;
    this.id = o.nodeId;
    this.address = o.advertise;
    this.leaseMs = leaseMs;
    this.peerFetch = o.fetch;
    this.log = o.log ?? ((m) => console.warn(`kvtier: ${m}`));
    this.view = new ClusterView(index, o.refreshMs !== undefined ? { refreshMs: o.refreshMs } : {});
  }

  /**
   * Joins the cluster: claims the node id (KVTIER_CONFLICT when it is live elsewhere), publishes
   * every key the warehouse holds, and follows its changes from then on.
   */
  static async join(warehouse: Warehouse, given: JoinOptions): Promise<ClusterNode> {
    if (typeof warehouse !== 'object' || warehouse === null) {
      throw badArgument('warehouse', 'a Warehouse', warehouse);
    }
    if (given === undefined) throw badArgument('options', 'an object', given);
    const options = readOptions<JoinOptions>(given, 'options', [
      'redis',
      'nodeId',
      'advertise',
      'leaseMs',
    ]) as JoinOptions;
    checkNodeId(options.nodeId);
    checkAddress(options.advertise);
    const leaseMs = options.leaseMs ?? 10_000;
    if (!Number.isSafeInteger(leaseMs) || leaseMs < MIN_LEASE_MS) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `leaseMs must be an integer of at least ${MIN_LEASE_MS}, got ${describe(leaseMs)}`,
      );
    }
    const index = await RedisIndex.open(options.redis, options);
    const node = new ClusterNode(warehouse, index, options, leaseMs);
    try {
      await node.start();
    } catch (e) {
      await node.close({ leave: false });
      throw e;
    }
    return node;
  }

  private async start(): Promise<void> {
    // Changes made while the first sync runs are kept and flushed after it.
    this.unwatch = this.warehouse.watch((added, removed) => this.changed(added, removed));
    await this.index.claim(this.id, this.instance, this.leaseMs, this.facts());
    await this.replaceAll();
    this.setState('ok');
    this.flushSoon();
    this.index.on('down', (e: Error) => this.degrade(`Redis unreachable: ${e.message}`));
    this.index.on('up', () => void this.enqueue(() => this.resync()));
    this.timer = setInterval(() => void this.tick(), Math.max(100, Math.floor(this.leaseMs / 3)));
    this.timer.unref();
    this.warehouse.setRemote(this);
    this.attached = true;
  }

  // ------------------------------------------------------------------------------ publishing

  private changed(added: readonly Key[], removed: readonly Key[]): void {
    if (this.state !== 'ok' && this.state !== 'resyncing') return; // the next resync covers it
    for (const k of added) this.pending.set(k, true);
    for (const k of removed) this.pending.set(k, false);
    this.flushSoon();
  }

  private flushSoon(): void {
    if (this.state !== 'ok' || this.pending.size === 0) return;
    if (this.pending.size >= FLUSH_KEYS) {
      void this.enqueue(() => this.flush());
      return;
    }
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // One flush per turn of the event loop gathers the changes of every operation in it.
    setImmediate(() => {
      this.flushScheduled = false;
      void this.enqueue(() => this.flush());
    });
  }

  private async flush(): Promise<void> {
    if (this.state !== 'ok' || this.pending.size === 0) return;
    const batch = this.pending;
    this.pending = new Map();
    const added: Key[] = [];
    const removed: Key[] = [];
    for (const [k, present] of batch) (present ? added : removed).push(k);
    try {
      const r = await this.index.publish(this.id, this.instance, this.leaseMs, added, removed);
      if (r === 'conflict') return this.displaced();
      if (r === 'lost') {
        // The lease lapsed (Redis restarted empty, or the node stalled): claim it again.
        this.setState('resyncing');
        await this.resync();
        return;
      }
      this.counters.published += added.length;
      this.counters.unpublished += removed.length;
    } catch (e) {
      this.degrade(message(e));
    }
  }

  /** Claims the lease again and republishes everything: after Redis returns or a lease lapsed. */
  private async resync(): Promise<void> {
    if (this.state === 'closed' || this.state === 'conflict') return;
    if (!this.index.connected) return;
    const wasOk = this.state === 'ok';
    this.setState('resyncing');
    this.pending.clear();
    try {
      await this.index.claim(this.id, this.instance, this.leaseMs, this.facts());
      await this.replaceAll();
      if (!wasOk) {
        this.counters.resyncs++;
        // The lease shows the count (and the fill) at once, not at the next renewal.
        await this.index.renew(this.id, this.instance, this.leaseMs, this.facts());
      }
      this.view.invalidate();
      this.setState('ok');
      this.log(
        `node ${this.id}: resynchronised ${this.warehouse.stats().blocks} blocks with ${this.index.display}`,
      );
      this.flushSoon();
    } catch (e) {
      if (isKvtierError(e, 'KVTIER_CONFLICT')) {
        this.setState('conflict', e.message);
        this.log(`node ${this.id}: ${e.message}; this node stops publishing`);
        return;
      }
      this.degrade(message(e));
    }
  }

  private async replaceAll(): Promise<void> {
    const keys = this.warehouse.keys();
    if (!(await this.index.replace(this.id, this.instance, this.leaseMs, keys))) {
      throw new KvtierError('KVTIER_REDIS', `node ${this.id} lost its lease while resynchronising`);
    }
  }

  private async tick(): Promise<void> {
    const now = Date.now();
    const gets = this.warehouse.stats().gets;
    const seconds = Math.max(0.001, (now - this.lastTick) / 1000);
    this.load = Math.round(((gets - this.lastGets) / seconds) * 10) / 10;
    this.lastGets = gets;
    this.lastTick = now;
    await this.enqueue(async () => {
      if (this.state === 'closed' || this.state === 'conflict') return;
      if (this.state !== 'ok') return this.resync();
      try {
        const r = await this.index.renew(this.id, this.instance, this.leaseMs, this.facts());
        if (r === 'lost') {
          // Redis restarted or was flushed between two renewals, unnoticed: resynchronise.
          this.setState('resyncing');
          await this.resync();
        }
        if (r === 'conflict') this.displaced();
      } catch (e) {
        this.degrade(message(e));
      }
    });
  }

  /** Another process took this node id over (a restart at the same address): step aside. */
  private displaced(): void {
    this.setState('conflict', `node id ${this.id} was taken over by another process`);
    this.pending.clear();
    this.log(`node ${this.id}: another process holds this node id now; this node stops publishing`);
  }

  private facts(): NodeFacts {
    const s = this.warehouse.stats();
    let capacity = 0;
    let used = 0;
    for (const t of s.tiers) {
      capacity += t.capacityBlocks * s.blockBytes;
      used += t.usedBlocks * s.blockBytes;
    }
    return {
      address: this.address,
      capacityBytes: capacity,
      usedBytes: used,
      blocks: s.blocks,
      load: this.load,
      resyncs: this.counters.resyncs,
    };
  }

  private degrade(reason: string): void {
    if (this.state === 'closed' || this.state === 'conflict') return;
    if (this.state !== 'degraded')
      this.log(`node ${this.id}: degraded (${reason}); serving from local tiers`);
    this.setState('degraded', reason);
    this.pending.clear();
  }

  private setState(state: NodeState, reason?: string): void {
    this.state = state;
    this.reason = state === 'ok' ? undefined : (reason ?? this.reason);
  }

  private enqueue<T>(f: () => Promise<T>): Promise<T | undefined> {
    const p = this.queue.then(f, f);
    this.queue = p.catch(() => undefined);
    return p.catch((e: unknown) => {
      this.degrade(message(e));
      return undefined;
    });
  }

  // -------------------------------------------------------------------------------- fetching

  /**
   * Fetches keys missing locally from the peers that hold them: the one holding the longest
   * prefix first; if it cannot deliver (gone, or its entries stale), the next. Whatever is not
   * delivered stays a miss, and an unreachable Redis or peer is a miss too, never an error.
   */
  async fetch(
    keys: readonly Key[],
    dst: Target,
    at: readonly number[],
    signal?: AbortSignal,
  ): Promise<boolean[]> {
    const got = new Array<boolean>(keys.length).fill(false);
    if (!this.peerFetch || this.state !== 'ok' || keys.length === 0) return got;
    // From the first key not yet delivered: the peer with the longest prefix from there, then
    // the next one if it cannot deliver; a few rounds at most.
    let start = 0;
    let tries = 0;
    for (let round = 0; round < FETCH_ROUNDS && start < keys.length; round++) {
      let holders;
      try {
        holders = (await this.view.holders(keys.slice(start))).filter((h) => h.id !== this.id);
      } catch (e) {
        this.degrade(message(e));
        break;
      }
      let advanced = 0;
      for (const h of holders) {
        if (tries++ >= FETCH_TRIES) break;
        const want = keys.slice(start, start + h.prefix);
        try {
          const res = await this.peerFetch(
            h.address,
            want,
            dst,
            at.slice(start, start + h.prefix),
            signal,
          );
          let delivered = 0;
          res.forEach((ok, j) => {
            if (ok === true && !got[start + j]) {
              got[start + j] = true;
              delivered++;
            }
          });
          this.counters.peerHits += delivered;
          // Entries the index promised that the peer no longer had: misses, nothing worse.
          this.counters.staleEntries += want.length - delivered;
          while (advanced < want.length && got[start + advanced]) advanced++;
          if (advanced > 0) break;
        } catch (e) {
          if (signal?.aborted) throw e;
          this.counters.peerErrors++;
          // Its lease has not run out yet, but the peer is gone: read the registry afresh.
          this.view.invalidate();
        }
      }
      if (advanced === 0) break;
      start += advanced;
    }
    return got;
  }

  /** Resolves once every change so far is published (or the node is degraded). */
  async settled(): Promise<void> {
    await this.enqueue(() => this.flush());
  }

  // --------------------------------------------------------------------------- stats, close

  stats(): NodeStats {
    return {
      nodeId: this.id,
      address: this.address,
      state: this.state,
      degraded: this.state !== 'ok',
      ...(this.reason !== undefined ? { reason: this.reason } : {}),
      ...this.counters,
    };
  }

  /**
   * Stops following the warehouse. With `leave` (the default) the node's entries are removed
   * from the index at once; without it they expire with the lease, as a crash would leave them.
   */
  async close(options: { leave?: boolean } = {}): Promise<void> {
    if (this.state === 'closed') return;
    const wasOk = this.state === 'ok';
    this.setState('closed');
    if (this.timer) clearInterval(this.timer);
    this.unwatch?.();
    if (this.attached) this.warehouse.setRemote(undefined);
    await this.queue;
    if ((options.leave ?? true) && wasOk) {
      try {
        await this.index.leave(this.id, this.instance);
      } catch {
        // Redis away: the lease expires on its own.
      }
    }
    await this.index.close();
  }
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** HOST:PORT, with [v6] brackets allowed. */
export function checkAddress(address: unknown): string {
  const m =
    typeof address === 'string'
      ? /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(address)
      : null;
  const port = m ? Number(m[2]) : 0;
  if (!m || port < 1 || port > 65535) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `an advertised address is HOST:PORT, got ${typeof address === 'string' ? JSON.stringify(address) : describe(address)}`,
    );
  }
  return address as string;
}
