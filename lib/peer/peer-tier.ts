/**
 * PeerTier: a remote kvtier node as the Warehouse's last tier. It is not a slot tier: the peer
 * places blocks itself, so the Warehouse's index covers only local tiers. Puts write through to the
 * peer; gets read from it the keys no local tier holds, then keep them locally (promotion). A peer
 * that is down or slow costs misses, never errors or wrong bytes: its failures are counted.
 */
import type { Target } from '../core/engine.js';
import { KvtierError } from '../core/errors.js';
import type { Key } from '../keys/keys.js';
import { connect, type PeerClient } from './client.js';

export interface PeerTierOptions {
  kind: 'peer';
  /** kvtier://HOST:PORT of a `kvtier serve` node. */
  url: string;
  tokenFile?: string;
  token?: string | Buffer;
  /** Per-operation timeout (default 10 s). */
  timeoutMs?: number;
  name?: string;
}

export interface PeerTierStats {
  hits: number;
  misses: number;
  bytesIn: number;
  bytesOut: number;
  /** Operations that failed (peer down, timed out, refused); their keys counted as misses. */
  errors: number;
}

export class PeerTier {
  readonly kind = 'peer';
  readonly stats: PeerTierStats = { hits: 0, misses: 0, bytesIn: 0, bytesOut: 0, errors: 0 };
  lastError: KvtierError | undefined;

  private constructor(
    readonly name: string,
    readonly client: PeerClient,
  ) {}

  static async open(options: PeerTierOptions, blockBytes: number): Promise<PeerTier> {
    const client = await connect(options.url, {
      ...(options.token !== undefined ? { token: options.token } : {}),
      ...(options.tokenFile !== undefined ? { tokenFile: options.tokenFile } : {}),
      blockBytes,
      timeoutMs: options.timeoutMs ?? 10_000,
    });
    return new PeerTier(options.name ?? 'peer', client);
  }

  private failed(e: unknown): void {
    this.stats.errors++;
    this.lastError =
      e instanceof KvtierError ? e : new KvtierError('KVTIER_PEER', String(e), { cause: e });
  }

  /** Writes blocks `at` of src (block i at i*blockBytes) under their keys; resolves when done. */
  async writeThrough(keys: readonly Key[], at: readonly number[], src: Target): Promise<void> {
    if (at.length === 0) return;
    try {
      const r = await this.client.putAt(
        at.map((i) => keys[i]!),
        src,
        at,
      );
      this.stats.bytesIn += r.stored * this.client.blockBytes;
    } catch (e) {
      this.failed(e);
    }
  }

  /**
   * Reads the blocks `at` into dst (block i at i*blockBytes). Resolves with the indexes found;
   * a failure of the peer makes them all misses.
   */
  async read(keys: readonly Key[], at: readonly number[], dst: Target): Promise<number[]> {
    if (at.length === 0) return [];
    try {
      const r = await this.client.getAt(
        at.map((i) => keys[i]!),
        dst,
        at,
      );
      const found = at.filter((_, j) => r.found[j]);
      this.stats.hits += found.length;
      this.stats.misses += at.length - found.length;
      this.stats.bytesOut += found.length * this.client.blockBytes;
      return found;
    } catch (e) {
      this.failed(e);
      this.stats.misses += at.length;
      return [];
    }
  }

  close(): Promise<void> {
    return this.client.close();
  }
}
