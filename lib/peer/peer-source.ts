/**
 * The peer as a block source: a remote kvtier node given as the Warehouse's last tier
 * (`{ kind: 'peer', url }`). It is not a slot tier: the peer places blocks itself, so the
 * Warehouse's index covers only local tiers. It is a source (gets read from it the keys no local
 * tier holds, then keep them locally) and a write-through sink (puts are written to it too). A
 * peer that is down or slow costs misses, never errors or wrong bytes: its failures are counted.
 *
 * Importing this module registers the kind 'peer' with the Warehouse (lib/index.ts does), so the
 * warehouse layer never imports the peer layer.
 */
import type { Target } from '../core/engine.js';
import { KvtierError } from '../core/errors.js';
import { badArgument, finite, guard, options as readOptions, string } from '../core/validate.js';
import type { Key } from '../keys/keys.js';
import { registerSourceKind } from '../warehouse/sources.js';
import type { SourceTier, TierStats } from '../warehouse/types.js';
import { connect, connectOptions, type PeerClient } from './client.js';

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

declare module '../warehouse/types.js' {
  interface SourceTierOptionsByKind {
    peer: PeerTierOptions;
  }
}

export interface PeerTierStats {
  hits: number;
  misses: number;
  bytesIn: number;
  bytesOut: number;
  /** Operations that failed (peer down, timed out, refused); their keys counted as misses. */
  errors: number;
}

export class PeerSource implements SourceTier {
  readonly kind = 'peer';
  readonly counts: PeerTierStats = { hits: 0, misses: 0, bytesIn: 0, bytesOut: 0, errors: 0 };
  lastError: KvtierError | undefined;

  private constructor(
    readonly name: string,
    readonly client: PeerClient,
  ) {}

  static async open(options: PeerTierOptions, blockBytes: number): Promise<PeerSource> {
    const client = await connect(
      options.url,
      connectOptions(options, { blockBytes, timeoutMs: options.timeoutMs ?? 10_000 }),
    );
    return new PeerSource(options.name ?? 'peer', client);
  }

  private failed(e: unknown): void {
    this.counts.errors++;
    this.lastError =
      e instanceof KvtierError ? e : new KvtierError('KVTIER_PEER', String(e), { cause: e });
  }

  /** Writes block at[j] of src (block i at i*blockBytes) under keys[j]; resolves when done. */
  async store(keys: readonly Key[], src: Target, at: readonly number[]): Promise<void> {
    if (at.length === 0) return;
    try {
      const r = await this.client.putAt(keys, src, at);
      this.counts.bytesIn += r.stored * this.client.blockBytes;
    } catch (e) {
      this.failed(e);
    }
  }

  /**
   * Reads the block of keys[j] into block at[j] of dst. Per key whether it did; a failure of the
   * peer makes them all misses.
   */
  async fetch(keys: readonly Key[], dst: Target, at: readonly number[]): Promise<boolean[]> {
    if (at.length === 0) return [];
    try {
      const r = await this.client.getAt(keys, dst, at);
      const found = at.map((_, j) => r.found[j] === true);
      const hits = found.filter(Boolean).length;
      this.counts.hits += hits;
      this.counts.misses += at.length - hits;
      this.counts.bytesOut += hits * this.client.blockBytes;
      return found;
    } catch (e) {
      this.failed(e);
      this.counts.misses += at.length;
      return at.map(() => false);
    }
  }

  tierStats(): TierStats {
    const s = this.counts;
    return {
      name: this.name,
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

  close(): Promise<void> {
    return this.client.close();
  }
}

function optional<T>(value: T | undefined, check: (v: T) => unknown): void {
  if (value !== undefined) check(value);
}

/** Reads and checks a peer tier description. */
function checkPeerOptions(given: unknown, name: string): PeerTierOptions {
  const t = readOptions<PeerTierOptions>(given, name, [
    'kind',
    'name',
    'url',
    'token',
    'tokenFile',
    'timeoutMs',
  ]);
  optional(t.name, (v) => string(v, `${name}.name`));
  string(t.url, `${name}.url`);
  optional(t.tokenFile, (v) => string(v, `${name}.tokenFile`));
  optional(t.token, (v) => {
    if (typeof v !== 'string' && !guard(`${name}.token`, () => Buffer.isBuffer(v))) {
      throw badArgument(`${name}.token`, 'a string or a Buffer', v);
    }
  });
  optional(t.timeoutMs, (v) => finite(v, `${name}.timeoutMs`, { min: 1 }));
  return t as PeerTierOptions;
}

registerSourceKind('peer', {
  check: checkPeerOptions,
  open: (options, blockBytes) => PeerSource.open(options, blockBytes),
});
