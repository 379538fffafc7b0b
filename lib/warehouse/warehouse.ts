/**
 * The Warehouse: put, lookup, get, prefetch, pin and evict blocks across tiers. It decides with
 * the BlockIndex and its policies, moves bytes with the engines (memory copies and file I/O on
 * kvtier's own threads), and checks every block's CRC-32C on the way out: a block that fails it
 * is dropped and counted, never returned.
 *
 * This class is the façade: it checks arguments and hands each operation to the module that owns
 * it. configure.ts opens the parts, placement.ts is the one pipeline that gives blocks slots,
 * writes.ts (put, evict) and reads.ts (get) use it, sources.ts fills misses from block sources
 * (a peer tier, the cluster), key-locks.ts, leases.ts, changes.ts, stats.ts and shutdown.ts keep
 * the rest, and host-slots.ts is the narrow interface for servers (warehouse.hostSlots).
 */
import { checkTarget, type Target } from '../core/engine.js';
import { abortError, KvtierError } from '../core/errors.js';
import { requireHostMemory } from '../core/bytes.js';
import { Region } from '../core/region.js';
import { func, guard } from '../core/validate.js';
import { KeyChain, toKey, toKeys, type Key, type KeyLike } from '../keys/keys.js';
import { ABSENT } from './block-index.js';
import { CallNumbers, type CallContext } from './calls.js';
import { openParts, type Parts } from './configure.js';
import { HostSlots } from './host-slots.js';
import { MAX_TIMER_MS } from './leases.js';
import {
  checkWarehouseOptions,
  checkGetOptions,
  checkLookupOptions,
  checkPinOptions,
  checkPrefetchOptions,
  checkPutOptions,
} from './options.js';
import { getNow } from './reads.js';
import { closeParts } from './shutdown.js';
import { checkTenancy } from './tenant-options.js';
import { TenantView } from './tenant-view.js';
import { prepareTenancy, Tenancy } from './tenants.js';
import type { SlotPlace } from './tier.js';
import type {
  BlockSource,
  ChangeListener,
  EvictResult,
  GetOptions,
  GetResult,
  Lease,
  LookupOptions,
  LookupResult,
  PrefetchOptions,
  PrefetchResult,
  PutOptions,
  PutResult,
  WarehouseOptions,
  WarehouseStats,
} from './types.js';
import { evictNow, putNow } from './writes.js';

export type * from './types.js';
export { HostSlots } from './host-slots.js';
export { TenantView } from './tenant-view.js';

export class Warehouse {
  readonly blockBytes: number;
  /**
   * @internal The narrow store interface for servers (the peer server, the engine channel):
   * claim, land, give back, reserve, lend, persist. Not part of the public API.
   */
  readonly hostSlots: HostSlots;
  private readonly parts: Parts;
  private closing: Promise<void> | undefined;
  private readonly tenancy: Tenancy | undefined;
  private readonly views = new Map<string, TenantView>();
  /** Session and request numbers for the policies (calls.ts). */
  private readonly calls = new CallNumbers();

  private constructor(parts: Parts, tenancy?: Tenancy) {
    this.parts = parts;
    this.tenancy = tenancy;
    this.blockBytes = parts.blockBytes;
    this.hostSlots = new HostSlots(
      parts,
      (expire) => {
        this.assertOpen();
        if (expire) parts.leases.expire();
      },
      this.calls,
    );
  }

  static async open(options: WarehouseOptions): Promise<Warehouse> {
    const tenancy = guard('options', () => (options as Partial<WarehouseOptions> | null)?.tenancy);
    if (tenancy === undefined) return new Warehouse(await openParts(options));
    // Tenancy is checked, and its secret found, before anything is opened.
    const checked = checkWarehouseOptions(options);
    const setup = await prepareTenancy(checkTenancy(checked.tenancy, checked.tiers), checked);
    const parts = await openParts(checked, setup.owners);
    const warehouse = new Warehouse(parts, new Tenancy(parts, setup));
    try {
      await setup.writeSecret?.();
    } catch (e) {
      await warehouse.close().catch(() => undefined);
      throw e;
    }
    return warehouse;
  }

  /**
   * One tenant's view of the store (docs/tenants.md): the same methods, over keys only that
   * tenant reaches, under its quotas, retention and accounting. KVTIER_UNKNOWN_TENANT for a name
   * the warehouse was not opened with (or any name, without `tenancy`). With tenancy, the
   * Warehouse's own methods are the operator's: they see every tenant's internal keys.
   */
  tenant(name: string): TenantView {
    this.assertOpen();
    if (!this.tenancy) {
      throw new KvtierError('KVTIER_UNKNOWN_TENANT', 'this warehouse was opened without tenancy');
    }
    const t = this.tenancy.get(name);
    let view = this.views.get(t.config.name);
    if (!view) this.views.set(t.config.name, (view = new TenantView(this, this.tenancy, t)));
    return view;
  }

  /** The tenants' names, in configuration order ([] without tenancy). */
  tenants(): string[] {
    return this.tenancy?.names() ?? [];
  }

  /** Throws once close() began; ends the leases whose time has come. */
  private enter(): void {
    if (this.closing) throw new KvtierError('KVTIER_CLOSED', 'the warehouse is closed');
    this.parts.leases.expire();
  }

  private assertOpen(): void {
    if (this.closing) throw new KvtierError('KVTIER_CLOSED', 'the warehouse is closed');
  }

  /** Host memory holding `blocks` blocks: GPU memory reaches the warehouse as a tier only. */
  private checkSpan(what: string, target: Target, blocks: number): void {
    requireHostMemory(target, what);
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
   * Stores blocks: block i of `src` (bytes [i*blockBytes, (i+1)*blockBytes)) under keys[i], in the
   * top tier (and the file tier too with writeThrough). Resolves once every stored block is
   * readable; with durability 'sync', once its file copy is durable.
   */
  async put(
    keys: KeyChain | readonly KeyLike[],
    src: Target,
    given: PutOptions = {},
  ): Promise<PutResult> {
    this.enter();
    const list = toKeys(keys);
    checkTarget(src, 'src');
    const options = checkPutOptions(given);
    this.checkSpan('src', src, list.length);
    const writeThrough = options.writeThrough ?? this.parts.writeThrough;
    const call = this.calls.next(options);
    return this.parts.inflight.track(
      putNow(this.parts, list, src, options.priority ?? 0, writeThrough, call),
    );
  }

  /**
   * How much of a chain is cached, and where; changes nothing (no policy hears of it, so the
   * session and hint options are checked and go no further).
   */
  lookup(keys: KeyChain | readonly KeyLike[], options: LookupOptions = {}): LookupResult {
    this.assertOpen();
    checkLookupOptions(options);
    // A proxy's traps may throw anywhere in the walk below: that is a bad argument too.
    const tiers = guard('keys', () => this.topTiers(keys));
    let prefix = 0;
    while (prefix < tiers.length && tiers[prefix] !== ABSENT) prefix++;
    return { prefix, tiers };
  }

  private topTiers(keys: KeyChain | readonly KeyLike[]): number[] {
    const { index } = this.parts;
    if (keys instanceof KeyChain) return keys.keys().map((k) => index.topTier(k));
    const list: readonly KeyLike[] = keys;
    if (!Array.isArray(keys)) toKeys(list); // throws the usual error
    const tiers = new Array<number>(list.length);
    for (let i = 0; i < list.length; i++) {
      const k: KeyLike = list[i]!;
      // Only valid keys are ever stored, so a string found as it is needs no validation; the
      // check runs for the misses, which may be malformed (and then throw) or differ in case.
      let t = typeof k === 'string' ? index.topTier(k) : ABSENT;
      if (t === ABSENT) {
        const canonical = toKey(k);
        if (canonical !== k) t = index.topTier(canonical);
      }
      tiers[i] = t;
    }
    return tiers;
  }

  /**
   * Copies the blocks of `keys` that are cached into `dst` (block i at i*blockBytes). A block that
   * is not cached is reported missing, which is not an error. Every block read is checked against
   * its CRC-32C; one that fails is dropped, counted as corrupt, and read from a lower copy if any.
   * Local misses are looked for in the source tiers (a peer), then in the cluster (setRemote).
   */
  async get(
    keys: KeyChain | readonly KeyLike[],
    dst: Target,
    given: GetOptions = {},
  ): Promise<GetResult> {
    this.enter();
    const list = toKeys(keys);
    checkTarget(dst, 'dst');
    const options = checkGetOptions(given);
    this.checkSpan('dst', dst, list.length);
    if (options.signal?.aborted) throw abortError(options.signal);
    return this.parts.inflight.track(
      getNow(this.parts, list, dst, options, this.calls.next(options)),
    );
  }

  /**
   * Brings cached blocks up to tier `to` ahead of need. Queued by priority, bounded in bytes in
   * flight, joined with transfers already under way, cancellable with a signal, dropped past its
   * deadline.
   */
  async prefetch(
    keys: KeyChain | readonly KeyLike[],
    given: PrefetchOptions = {},
  ): Promise<PrefetchResult> {
    this.enter();
    const list = toKeys(keys);
    const options = checkPrefetchOptions(given);
    const to = this.tierIndex(options.to);
    if (options.signal?.aborted) throw abortError(options.signal);
    const call = this.calls.next(options);
    const job = this.parts.prefetcher.enqueue(
      {
        bytes: list.length * this.blockBytes,
        priority: options.priority ?? 0,
        ...(options.deadline !== undefined ? { deadline: options.deadline } : {}),
        ...(options.signal !== undefined ? { signal: options.signal } : {}),
      },
      () => this.prefetchNow(list, to, call),
    );
    return this.parts.inflight.track(job);
  }

  private tierIndex(to: number | string | undefined): number {
    if (to === undefined) return 0;
    const { tiers } = this.parts;
    const t = typeof to === 'number' ? to : tiers.findIndex((x) => x.name === to);
    if (!Number.isInteger(t) || t < 0 || t >= tiers.length) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', `no tier ${String(to)}`);
    }
    return t;
  }

  private async prefetchNow(keys: Key[], to: number, call: CallContext): Promise<PrefetchResult> {
    const { locks, index, placement } = this.parts;
    while (locks.unsettled(keys)) await locks.settle(keys);
    const result: PrefetchResult = { moved: 0, alreadyThere: 0, missing: 0 };
    const items: { key: Key; from: SlotPlace; tier: number }[] = [];
    const pinned: Key[] = [];
    for (const key of new Set(keys)) {
      const e = index.get(key);
      if (!e) {
        result.missing++;
        continue;
      }
      const top = index.topTier(key);
      if (top <= to) {
        result.alreadyThere++;
        continue;
      }
      index.pin(key);
      pinned.push(key);
      items.push({ key, from: placement.place(top, e.slots[top]!), tier: top });
    }
    if (items.length === 0) return result;
    try {
      result.moved = (await placement.copyTo(items, to, call)).committed.length;
    } finally {
      for (const k of pinned) index.unpin(k);
    }
    result.missing += items.length - result.moved;
    return result;
  }

  /**
   * Leases the blocks against eviction for `ttlMs` (default 30 s), so a client that crashes cannot
   * pin them forever. Keys not cached are skipped.
   */
  pin(keys: KeyChain | readonly KeyLike[], options: { ttlMs?: number } = {}): Lease {
    this.enter();
    const ttl = checkPinOptions(options, MAX_TIMER_MS).ttlMs ?? 30_000;
    return this.parts.leases.pin(toKeys(keys), ttl);
  }

  /** Ends a lease early. Idempotent. */
  unpin(lease: Lease): void {
    this.parts.leases.unpin(lease);
  }

  /**
   * Removes blocks from every tier (pinned ones stay). A file tier forgets them on disk too, so
   * they do not come back after a restart. Resolves with the number removed and each key's
   * status, so a caller (the peer server) need not look keys up before and after.
   */
  async evict(keys: KeyChain | readonly KeyLike[]): Promise<EvictResult> {
    this.enter();
    const list = toKeys(keys);
    return this.parts.inflight.track(evictNow(this.parts, list));
  }

  /**
   * Calls `listener` after every operation that added keys to the warehouse or removed them
   * from its last tier (eviction, evict(), a corrupt copy dropped), so a cluster index can follow.
   * Returns the function that stops it.
   */
  watch(listener: ChangeListener): () => void {
    func(listener, 'listener');
    return this.parts.feed.watch(listener);
  }

  /** Every key held now, in any tier. */
  keys(): Key[] {
    const out: Key[] = [];
    for (const [key] of this.parts.index) out.push(key);
    return out;
  }

  /**
   * The source a local miss is looked for in last, after any source tier (the cluster: a
   * ClusterNode attaches itself), or undefined for none.
   */
  setRemote(source: BlockSource | undefined): void {
    this.parts.sources.setRemote(source);
  }

  stats(): WarehouseStats {
    const p = this.parts;
    p.leases.expire();
    const report = p.stats.report(this.blockBytes, p.index, p.tiers, p.sources);
    if (p.staging) report.predictivePrefetch = p.staging.report(p.tiers.map((t) => t.name));
    if (this.tenancy) {
      if (this.tenancy.due()) void this.tenancy.sweep().catch(() => undefined);
      report.tenants = this.tenancy.allStats();
    }
    return report;
  }

  /**
   * Lets every put, get, prefetch and eviction in flight finish (queued prefetches are dropped),
   * makes the file tier durable, then frees memory, closes files and releases the directory lock.
   * All of that happens even when a step fails. When blocks held only in faster tiers could not be
   * written down to the file tier (a full disk, say), close rejects afterwards with a CloseError
   * naming them: they are lost.
   */
  close(): Promise<void> {
    this.tenancy?.close();
    this.closing ??= closeParts(this.parts);
    return this.closing;
  }
}
