/**
 * The global block index in Redis: node leases, per-node block sets, and chain lookups. Every
 * operation is a script over the keys of one node (one hash slot), so it is atomic and runs on
 * Redis Cluster as on a single server. This module speaks Redis; lib/cluster/node.ts decides
 * when to speak.
 */
import { EventEmitter } from 'node:events';

import { KvtierError } from '../core/errors.js';
import { keyBytes, type Key } from '../keys/keys.js';
import {
  openRedis,
  redisError,
  type OpenRedisOptions,
  type RedisClient,
  type RedisMode,
} from './redis-connect.js';
import {
  chainArgument,
  CLAIM,
  INDEX_FORMAT,
  LEAVE,
  LOOKUP,
  nodeKeys,
  PUBLISH,
  REGISTRY_KEY,
  RENEW,
  SWAP,
} from './schema.js';

/** Block keys per script call: well under Lua's limit on unpack() arguments. */
export const PUBLISH_CHUNK = 2000;

type ScriptResult = unknown;
interface Scripts {
  kvtClaim(...args: (string | number | Buffer)[]): Promise<ScriptResult>;
  kvtRenew(...args: (string | number | Buffer)[]): Promise<ScriptResult>;
  kvtPublish(...args: (string | number | Buffer)[]): Promise<ScriptResult>;
  kvtSwap(...args: (string | number | Buffer)[]): Promise<ScriptResult>;
  kvtLeave(...args: (string | number | Buffer)[]): Promise<ScriptResult>;
  kvtLookup(...args: (string | number | Buffer)[]): Promise<ScriptResult>;
}

/** What a node says about itself in its lease. */
export interface NodeFacts {
  address: string;
  capacityBytes: number;
  usedBytes: number;
  blocks: number;
  /** Recent requests per second: the tie-breaker when routing. */
  load: number;
  /** Times this node lost Redis and resynchronised since it started. */
  resyncs: number;
}

/** A node as the registry shows it. */
export interface NodeRecord extends NodeFacts {
  id: string;
  format: string;
  /** Whether this node runs this kvtier's index format (others are ignored). */
  compatible: boolean;
  leaseMs: number;
  /** Milliseconds since the node last renewed its lease, by Redis's clock. */
  leaseAgeMs: number;
  /** Milliseconds until the lease runs out unless renewed. */
  leaseLeftMs: number;
  startedAt: number;
}

export type LeaseOutcome = 'ok' | 'lost' | 'conflict';

export interface RedisIndexOptions extends OpenRedisOptions {
  /** Where notes about foreign-format entries go (default console.warn). */
  log?: (message: string) => void;
}

/** The connection to the index. Emits 'down' (with an Error) and 'up' as Redis comes and goes. */
export class RedisIndex extends EventEmitter {
  readonly mode: RedisMode;
  readonly display: string;
  private readonly client: RedisClient;
  private readonly scripts: Scripts;
  private readonly log: (message: string) => void;
  private readonly foreignLogged = new Set<string>();
  private up = true;
  private closed = false;

  private constructor(
    client: RedisClient,
    mode: RedisMode,
    display: string,
    log: (m: string) => void,
  ) {
    super();
    this.client = client;
    this.mode = mode;
    this.display = display;
    this.log = log;
    const define = (name: string, lua: string, keys?: number): void => {
      client.defineCommand(name, keys === undefined ? { lua } : { lua, numberOfKeys: keys });
    };
    define('kvtClaim', CLAIM, 2);
    define('kvtRenew', RENEW, 2);
    define('kvtPublish', PUBLISH, 2);
    define('kvtSwap', SWAP, 3);
    define('kvtLeave', LEAVE, 2);
    define('kvtLookup', LOOKUP); // the caller passes the number of keys: pairs per node
    this.scripts = client as unknown as Scripts;
    const down = (why?: Error): void => {
      if (!this.up || this.closed) return;
      this.up = false;
      this.emit('down', why ?? new Error('connection closed'));
    };
    client.on('close', () => down());
    client.on('end', () => down());
    client.on('node error', (e: Error) => down(e));
    client.on('ready', () => {
      if (this.up || this.closed) return;
      this.up = true;
      this.emit('up');
    });
  }

  static async open(url: string, options: RedisIndexOptions = {}): Promise<RedisIndex> {
    const { client, mode, target } = await openRedis(url, options);
    return new RedisIndex(
      client,
      mode,
      target.display,
      options.log ?? ((m) => console.warn(`kvtier: ${m}`)),
    );
  }

  /** Whether the connection is up now (a command may still fail). */
  get connected(): boolean {
    return this.up && !this.closed;
  }

  private async call<T>(what: string, f: () => Promise<T>): Promise<T> {
    if (this.closed) throw new KvtierError('KVTIER_CLOSED', 'the cluster index is closed');
    try {
      return await f();
    } catch (e) {
      throw redisError(e, what);
    }
  }

  // --------------------------------------------------------------------------------- a node

  /** Takes the lease of node `id`; refuses (KVTIER_CONFLICT) an id live at another address. */
  async claim(id: string, instance: string, leaseMs: number, facts: NodeFacts): Promise<void> {
    const k = nodeKeys(id);
    const reply = (await this.call('claiming a node id', () =>
      this.scripts.kvtClaim(
        k.node,
        k.blocks,
        instance,
        facts.address,
        leaseMs,
        INDEX_FORMAT,
        ...factFields(facts, { startedAt: Date.now() }),
      ),
    )) as [string, string];
    if (reply[0] === 'conflict') {
      throw new KvtierError(
        'KVTIER_CONFLICT',
        `node id ${id} is already live at ${reply[1]} (its lease has not expired); pick another id or stop that node`,
      );
    }
    await this.call('registering a node', () => this.client.sadd(REGISTRY_KEY, id));
  }

  async renew(
    id: string,
    instance: string,
    leaseMs: number,
    facts: NodeFacts,
  ): Promise<LeaseOutcome> {
    const k = nodeKeys(id);
    const reply = await this.call('renewing a lease', async () => {
      const r = await this.scripts.kvtRenew(
        k.node,
        k.blocks,
        instance,
        leaseMs,
        ...factFields(facts),
      );
      // The registry heals itself: a reader may have pruned the id while the lease was away.
      if (r === 'ok') await this.client.sadd(REGISTRY_KEY, id);
      return r;
    });
    return reply as LeaseOutcome;
  }

  /** Adds and removes block keys, while this instance holds the lease. */
  async publish(
    id: string,
    instance: string,
    leaseMs: number,
    added: readonly Key[],
    removed: readonly Key[],
  ): Promise<LeaseOutcome> {
    const k = nodeKeys(id);
    const calls: Promise<ScriptResult>[] = [];
    let a = 0;
    let r = 0;
    while (a < added.length || r < removed.length) {
      const adds = added.slice(a, a + PUBLISH_CHUNK);
      a += adds.length;
      const rems = removed.slice(r, r + PUBLISH_CHUNK - adds.length);
      r += rems.length;
      calls.push(
        this.scripts.kvtPublish(
          k.node,
          k.blocks,
          instance,
          leaseMs,
          adds.length,
          ...adds.map(keyBytes),
          ...rems.map(keyBytes),
        ),
      );
    }
    // Issued together: auto-pipelining sends them in one write, in order.
    const replies = await this.call('publishing blocks', () => Promise.all(calls));
    if (replies.some((x) => x === 0)) return 'conflict';
    return replies.every((x) => x === 1) ? 'ok' : 'lost';
  }

  /** Replaces the node's whole block set with `keys`, atomically for readers. */
  async replace(
    id: string,
    instance: string,
    leaseMs: number,
    keys: readonly Key[],
  ): Promise<boolean> {
    const k = nodeKeys(id);
    const reply = await this.call('resynchronising blocks', async () => {
      const calls: Promise<unknown>[] = [this.client.del(k.sync)];
      for (let i = 0; i < keys.length; i += PUBLISH_CHUNK) {
        calls.push(this.client.sadd(k.sync, ...keys.slice(i, i + PUBLISH_CHUNK).map(keyBytes)));
      }
      // A crash midway leaves no orphan set behind for long.
      calls.push(this.client.pexpire(k.sync, leaseMs));
      await Promise.all(calls);
      return this.scripts.kvtSwap(k.node, k.blocks, k.sync, instance, leaseMs);
    });
    return reply === 1;
  }

  async leave(id: string, instance: string): Promise<void> {
    const k = nodeKeys(id);
    await this.call('leaving the cluster', async () => {
      if ((await this.scripts.kvtLeave(k.node, k.blocks, instance)) === 1) {
        await this.client.srem(REGISTRY_KEY, id);
      }
    });
  }

  // ---------------------------------------------------------------------------- the cluster

  /**
   * Every registered node whose lease is live, foreign formats included (flagged, logged once).
   * Ids whose lease has expired are dropped from the registry on the way.
   */
  async nodes(): Promise<NodeRecord[]> {
    return this.call('listing nodes', async () => {
      const ids = (await this.client.smembers(REGISTRY_KEY)).sort();
      const rows = await Promise.all(
        ids.map(async (id) => {
          const k = nodeKeys(id);
          // Renewal sets the TTL to the lease, so the lease's age is what the TTL has lost: no
          // clocks to compare.
          const [hash, pttl] = await Promise.all([
            this.client.hgetall(k.node),
            this.client.pttl(k.node),
          ]);
          return { id, hash, pttl };
        }),
      );
      const out: NodeRecord[] = [];
      const gone: string[] = [];
      for (const { id, hash, pttl } of rows) {
        if (hash.instance === undefined || pttl < 0) {
          gone.push(id);
          continue;
        }
        const record = toRecord(id, hash, pttl);
        if (!record.compatible) this.noteForeign(id, record.format);
        out.push(record);
      }
      if (gone.length > 0) await this.client.srem(REGISTRY_KEY, ...gone);
      return out;
    });
  }

  private noteForeign(id: string, format: string): void {
    const tag = `${id}/${format}`;
    if (this.foreignLogged.has(tag)) return;
    this.foreignLogged.add(tag);
    this.log(
      `node ${id} publishes index format ${format || '(none)'}, this kvtier reads format ${INDEX_FORMAT}: its entries are ignored`,
    );
  }

  /**
   * For each node id, how many leading keys of `keys` it holds (nodes whose lease is gone, or
   * that run another format, are left out). One round trip: on a single server one script asks
   * every node; on Redis Cluster one script per node runs on that node's shard, all at once.
   */
  async lookup(keys: readonly Key[], ids: readonly string[]): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    if (ids.length === 0 || keys.length === 0) {
      for (const id of ids) out.set(id, 0);
      return keys.length === 0 ? out : new Map();
    }
    const args = [INDEX_FORMAT, chainArgument(keys.map(keyBytes))];
    const pairs = (list: readonly string[]): string[] =>
      list.flatMap((id) => {
        const k = nodeKeys(id);
        return [k.node, k.blocks];
      });
    const groups = this.mode === 'standalone' ? [ids] : ids.map((id) => [id]);
    const replies = await this.call('looking up a chain', () =>
      Promise.all(
        groups.map(
          (g) => this.scripts.kvtLookup(g.length * 2, ...pairs(g), ...args) as Promise<number[]>,
        ),
      ),
    );
    groups.forEach((g, gi) => {
      g.forEach((id, j) => {
        const n = replies[gi]![j]!;
        if (n >= 0) out.set(id, n);
        else if (n === -2) this.noteForeign(id, '(another)');
      });
    });
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.client.quit();
    } catch {
      this.client.disconnect();
    }
  }
}

function factFields(facts: NodeFacts, extra: Record<string, number> = {}): string[] {
  const out: string[] = [];
  const all = {
    capacityBytes: facts.capacityBytes,
    usedBytes: facts.usedBytes,
    blocks: facts.blocks,
    load: facts.load,
    resyncs: facts.resyncs,
    ...extra,
  };
  for (const [k, v] of Object.entries(all)) out.push(k, String(v));
  return out;
}

function num(s: string | undefined): number {
  const n = Number(s);
  return Number.isFinite(n) ? n : 0;
}

function toRecord(id: string, h: Record<string, string>, pttl: number): NodeRecord {
  const format = h.format ?? '';
  const leaseMs = num(h.leaseMs);
  return {
    id,
    address: h.address ?? '',
    format,
    compatible: format === INDEX_FORMAT,
    capacityBytes: num(h.capacityBytes),
    usedBytes: num(h.usedBytes),
    blocks: num(h.blocks),
    load: num(h.load),
    resyncs: num(h.resyncs),
    leaseMs,
    leaseAgeMs: Math.max(0, leaseMs - pttl),
    leaseLeftMs: pttl,
    startedAt: num(h.startedAt),
  };
}
