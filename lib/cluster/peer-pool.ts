/**
 * How a node in a cluster fetches from its peers: one authenticated connection per peer
 * address, opened on first use and dropped when it fails (the next fetch opens a fresh one).
 * Requests ask the peer for its own blocks only, so a stale entry never sends nodes in a loop.
 */
import { connect, connectOptions, type PeerClient } from '../peer/client.js';
import type { Target } from '../core/engine.js';
import type { Key } from '../keys/keys.js';
import type { PeerFetch } from './node.js';

export interface PeerPoolOptions {
  /** The cluster's shared secret, or */
  token?: string | Buffer;
  /** a file holding it. */
  tokenFile?: string;
  blockBytes: number;
  /** Per-request timeout (default 5 s): a stalled peer costs a miss, not a hang. */
  timeoutMs?: number;
  /** Timeout of connecting to a peer (default 2 s). */
  connectTimeoutMs?: number;
}

export class PeerPool {
  private readonly clients = new Map<string, Promise<PeerClient>>();
  private readonly options: PeerPoolOptions;
  private closed = false;

  constructor(options: PeerPoolOptions) {
    this.options = options;
  }

  /** The PeerFetch a ClusterNode uses. */
  readonly fetch: PeerFetch = async (
    address: string,
    keys: readonly Key[],
    dst: Target,
    at: readonly number[],
  ): Promise<boolean[]> => {
    const client = await this.client(address);
    try {
      return (await client.getAt(keys, dst, at, { localOnly: true })).found;
    } catch (e) {
      this.drop(address, client);
      throw e;
    }
  };

  private client(address: string): Promise<PeerClient> {
    let p = this.clients.get(address);
    if (!p) {
      const o = this.options;
      p = connect(
        address,
        connectOptions(o, {
          blockBytes: o.blockBytes,
          timeoutMs: o.timeoutMs ?? 5000,
          connectTimeoutMs: o.connectTimeoutMs ?? 2000,
          // Reconnecting is this pool's business: a failed peer is dropped and dialled afresh.
          reconnect: false,
        }),
      );
      this.clients.set(address, p);
      p.catch(() => {
        if (this.clients.get(address) === p) this.clients.delete(address);
      });
    }
    return p;
  }

  private drop(address: string, client: PeerClient): void {
    this.clients.delete(address);
    void client.close().catch(() => {});
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const all = [...this.clients.values()];
    this.clients.clear();
    await Promise.allSettled(all.map(async (p) => (await p).close()));
  }
}
