/**
 * The placement executor: the one pipeline that gives blocks slots in tiers. Every operation that
 * places blocks (put, promotion and prefetch copies, write-down on close, durable puts, the peer
 * server's ingest and reservations) runs it:
 *
 *   plan (BlockIndex.plan, by the caller) → begin: hold the keys and the plans' victims, make room
 *   (victims written down a tier, deepest first) → transfer the bytes in, checksumming them
 *   (or checksum bytes someone else wrote in place) → describe (slot headers, once payloads are
 *   down: a slot never describes bytes that were not written) → sync (durability 'sync') →
 *   commit or abort each plan, all at once → report keys added and evicted to the change feed.
 *
 * Nothing reaches the index before commit: a failure anywhere aborts the plans not committed, so
 * their slots and victims are given back and the index stays as it was.
 */
import type { IoEngine } from '../core/engine.js';
import type { KvtierError } from '../core/errors.js';
import type { InFlight } from '../core/inflight.js';
import type { Key } from '../keys/keys.js';
import type { AccessInfo } from '../policy/policy.js';
import { ABSENT, type BlockIndex, type Plan } from './block-index.js';
import type { CallContext } from './calls.js';
import type { ChangeFeed } from './changes.js';
import type { Hold, KeyLocks } from './key-locks.js';
import type { StatsBook } from './stats.js';
import type { SlotBlock, SlotPlace, Tier } from './tier.js';
import { dropRefused, failureOf, makeRoom, type PlaceFailure } from './make-room.js';
import { SlotHeaders } from './slot-headers.js';
import { TransferRound } from './transfers.js';

export { failureOf, type PlaceFailure } from './make-room.js';

/** One block to place: its plan, where its bytes come from, and how it is accessed. */
export interface Placing {
  readonly plan: Plan<Key>;
  /** The bytes copied into the slot; absent when someone else writes them (claim, reserve). */
  readonly from?: SlotPlace;
  readonly length: number;
  /** The block's CRC-32C: when given, the copy must match it; otherwise the copy computes it. */
  checksum?: number;
  /** Into an encoding tier: the CRC-32C of the stored bytes (the slot header's). */
  stored?: number;
  /** For the policies at commit: priority, position in its chain, chain length. */
  readonly priority: number;
  readonly depth: number;
  readonly chain: number;
  /** The call the block is placed for (its request, session and hint), when one is known. */
  readonly call?: CallContext;
}

/**
 * How slot headers are written. 'later': not waited for, and gathered across concurrent puts into
 * one write (slot-headers.ts; close and syncFiles wait); 'together': batched and waited
 * for, a failure failing the whole tier's group; 'each': one write per block, waited for, so each
 * block knows whether its own landed.
 */
export type HeaderMode = 'later' | 'together' | 'each';

/** What the executor works with: the Warehouse's parts. */
export interface PlacementEnv {
  readonly index: BlockIndex<Key>;
  readonly tiers: readonly Tier[];
  readonly memoryEngine: IoEngine;
  readonly fileEngine: IoEngine;
  readonly gpuCopy: IoEngine | undefined;
  readonly stats: StatsBook;
  readonly feed: ChangeFeed;
  readonly locks: KeyLocks;
  readonly inflight: InFlight;
  readonly now: () => number;
}

export class Placement {
  /** The describe and sync steps, and the 'later' headers gathered across runs. */
  readonly headers: SlotHeaders;

  constructor(readonly env: PlacementEnv) {
    this.headers = new SlotHeaders(env);
  }

  /** The AccessInfo of one block of a call (`call`: its request, session and hint). */
  info(priority: number, depth: number, chain: number, call?: CallContext): AccessInfo {
    const info: AccessInfo = { now: this.env.now(), priority, depth, chainLength: chain };
    if (call) {
      info.request = call.request;
      if (call.session !== undefined) info.session = call.session;
      if (call.hint !== undefined) info.hint = call.hint;
    }
    return info;
  }

  /** Holds the plans' keys, their victims and `also`, and makes room for them. */
  async begin(items: Placing[], also: Iterable<Key> = []): Promise<PlacementBatch> {
    const hold = this.env.locks.hold();
    hold.add(also);
    const keys: Key[] = [];
    for (const { plan } of items) {
      keys.push(plan.key);
      for (const m of plan.moves) keys.push(m.key);
    }
    hold.add(keys);
    const batch = new PlacementBatch(this, items, hold);
    try {
      const refused: { key: Key; tier: number }[] = [];
      const failed = await this.makeRoom(
        items.map((p) => p.plan),
        refused,
      );
      for (const p of items) {
        const why = failed.get(p.plan);
        if (why !== undefined) batch.drop(p, why);
      }
      dropRefused(this.env, refused);
      batch.handOut();
      return batch;
    } catch (e) {
      batch.abort();
      batch.release();
      throw e;
    }
  }

  /** The whole pipeline for blocks whose bytes are copied in: resolves with the ended batch. */
  async run(
    items: Placing[],
    options: { headers: HeaderMode; sync?: boolean; also?: Iterable<Key>; added?: boolean },
  ): Promise<PlacementBatch> {
    const later = options.headers === 'later';
    if (later) this.headers.enter();
    let counted = later;
    try {
      const batch = await this.begin(items, options.also);
      try {
        await batch.transfer();
        counted = false;
        if (later) this.headers.leave(false);
        await batch.describe(options.headers);
        if (options.sync) await batch.sync();
        batch.commit(options.added ?? false);
        return batch;
      } catch (e) {
        batch.abort();
        throw e;
      } finally {
        batch.release();
      }
    } finally {
      // A run that failed before its headers may have been what others were waiting to join.
      if (counted) this.headers.leave(true);
    }
  }

  /**
   * Gives each key a slot in tier `to` (making room as a put does) and copies its bytes there
   * from `from`, verified against the checksum the index knows: promotion, prefetch, write-down.
   * Returns the ended batch (its `committed` landed; its `errors` say why others did not).
   * `staged`: placed by predictive prefetch (AccessInfo.staged), not by a request. An item whose
   * `tier` names the tier `from` is a slot of has that copy dropped, and counted corrupt, when the
   * bytes it gave fail verification (as a get does with a copy it cannot use).
   */
  async copyTo(
    items: readonly { key: Key; from: SlotPlace; tier?: number }[],
    to: number,
    call?: CallContext,
    staged = false,
  ): Promise<PlacementBatch> {
    const { index } = this.env;
    const placing: Placing[] = [];
    const seen = new Set<Key>();
    const sources = new Map<Key, { tier: number; slot: number }>();
    for (const { key, from, tier } of items) {
      // A key named twice (two sequences sharing a prompt in one get) gets one slot, not two.
      if (seen.has(key)) continue;
      seen.add(key);
      const e = index.get(key);
      if (!e || e.slots[to] !== ABSENT) continue;
      const info = this.info(e.priority, 0, 1, call);
      if (staged) info.staged = true;
      const plan = index.plan(key, to, info);
      if (!plan) continue;
      if (tier !== undefined && e.slots[tier] !== ABSENT) {
        sources.set(key, { tier, slot: e.slots[tier]! });
      }
      placing.push({
        plan,
        from,
        length: e.length,
        checksum: e.checksum,
        priority: e.priority,
        depth: 0,
        chain: 1,
        ...(call ? { call } : {}),
      });
    }
    const batch = await this.run(placing, { headers: 'each' });
    if (batch.mismatched.size > 0) this.dropDamaged(batch.mismatched, sources);
    return batch;
  }

  /** Drops the source copies whose bytes failed verification, if the index still points there. */
  private dropDamaged(keys: Set<Key>, sources: Map<Key, { tier: number; slot: number }>): void {
    const { index, stats, feed } = this.env;
    const gone: Key[] = [];
    for (const key of keys) {
      const src = sources.get(key);
      if (!src || index.get(key)?.slots[src.tier] !== src.slot) continue;
      stats.corrupt(src.tier);
      index.remove(key, src.tier);
      if (!index.get(key)) gone.push(key);
    }
    feed.changed([], gone);
  }

  /**
   * Carries out the moves of plans (make-room.ts); returns the plans whose moves failed, and why:
   * those must be aborted, not committed.
   */
  makeRoom(
    plans: readonly Plan<Key>[],
    refused: { key: Key; tier: number }[] = [],
  ): Promise<Map<Plan<Key>, PlaceFailure>> {
    return makeRoom(this, plans, refused);
  }

  /** Syncs the file tiers once pending header writes are down (SlotHeaders.sync). */
  syncFiles(): Promise<PlaceFailure | undefined> {
    return this.headers.sync();
  }

  /** The file tier, where header and sync failures are counted (for make-room.ts too). */
  fileTier(): number | undefined {
    return this.headers.fileTier();
  }

  /** Adds the header writes of blocks landing in each tier that keeps headers (make-room.ts). */
  describeAll(round: TransferRound, landing: readonly SlotBlock[][]): void {
    this.headers.describeAll(round, landing);
  }

  /** Forgets the gathered header of a slot about to get another header (or a zero one). */
  dropHeader(tier: number, slot: number): void {
    this.headers.drop(tier, slot);
  }

  place(tier: number, slot: number): SlotPlace {
    return this.env.tiers[tier]!.place(slot);
  }

  runRound(round: TransferRound): ReturnType<TransferRound['run']> {
    return round.run(this.env.memoryEngine, this.env.fileEngine, this.env.gpuCopy);
  }
}

/** One run of the pipeline over a set of plans, step by step. */
export class PlacementBatch {
  /** Why each failed block failed; a failed block is aborted at commit. */
  readonly failed = new Map<Placing, PlaceFailure>();
  /** The errors behind failures, for callers that report them (close). */
  readonly errors: KvtierError[] = [];
  /** Blocks committed (or claimed), in order. */
  readonly committed: Placing[] = [];
  /** Keys whose copied bytes did not match the checksum the index knows: the source is damaged. */
  readonly mismatched = new Set<Key>();
  private readonly ended = new Set<Placing>();
  /** Items whose slots may have been written since: given back by discard(), not rolled back. */
  private readonly written = new Set<Placing>();

  constructor(
    private readonly exec: Placement,
    readonly items: readonly Placing[],
    private readonly hold: Hold,
  ) {}

  /** Items not failed (so far). */
  get live(): Placing[] {
    return this.items.filter((p) => !this.failed.has(p));
  }

  fail(p: Placing, why: PlaceFailure): void {
    this.failed.set(p, why);
  }

  /** Room is made: every live item's slot may be written from now on (begin() calls it). */
  handOut(): void {
    for (const p of this.live) this.written.add(p);
  }

  /**
   * Fails an item before anything is written into its slot, and gives back its slot and victims
   * now, not at the end.
   */
  drop(p: Placing, why: PlaceFailure): void {
    this.fail(p, why);
    if (this.ended.has(p)) return;
    this.ended.add(p);
    settleCoded(this.exec.env.tiers, p.plan, false);
    this.exec.env.index.abort(p.plan);
  }

  /** Copies each live item's bytes in from `from`, checksumming them (or verifying the checksum). */
  async transfer(): Promise<void> {
    const { stats } = this.exec.env;
    const round = new TransferRound();
    const moving: { p: Placing; at: number }[] = [];
    for (const p of this.live) {
      if (!p.from) continue;
      const to = this.exec.place(p.plan.tier, p.plan.slot);
      moving.push({ p, at: round.move(p.from, to, p.length, true) });
    }
    if (moving.length === 0) return;
    const outcomes = await this.exec.runRound(round);
    const { tiers } = this.exec.env;
    for (const { p, at } of moving) {
      const o = outcomes[at]!;
      if (o.error) this.errors.push(o.error);
      if (o.ok && o.intact === false) {
        // Out of an encoding tier, damaged: not copied. The next get that reads it counts it
        // corrupt and drops it (reads.ts).
        this.fail(p, 'io-error');
      } else if (!o.ok || o.checksum === undefined) {
        this.fail(p, failureOf(o.error));
        stats.ioError(p.plan.tier);
      } else if (o.intact === true) {
        // Decoded out of an encoding tier: the block is now what the codec gives back.
        p.checksum = o.checksum;
      } else if (p.checksum === undefined) {
        p.checksum = o.checksum;
      } else if (p.checksum !== o.checksum) {
        this.fail(p, 'io-error'); // the source changed or is damaged: not this copy
        this.mismatched.add(p.plan.key);
      }
      if (o.stored !== undefined && !this.failed.has(p)) {
        p.stored = o.stored;
        tiers[p.plan.tier]!.recordStored?.(p.plan.slot, o.stored);
      }
    }
  }

  /**
   * For bytes someone else wrote into the slots (reserve): takes their checksums, one per live
   * item in order, or computes them from the slots when not given.
   */
  async checksumInPlace(given?: ArrayLike<number>): Promise<void> {
    const live = this.live;
    if (given && given.length === live.length) {
      live.forEach((p, n) => (p.checksum = given[n]! >>> 0));
      return;
    }
    const round = new TransferRound();
    for (const p of live) {
      round.checksum(
        this.exec.place(p.plan.tier, p.plan.slot) as SlotPlace & { kind: 'memory' },
        p.length,
      );
    }
    const outcomes = await round.run(this.exec.env.memoryEngine, this.exec.env.fileEngine);
    live.forEach((p, n) => {
      const o = outcomes[n]!;
      if (o.ok && o.checksum !== undefined) p.checksum = o.checksum;
      else {
        this.fail(p, failureOf(o.error));
        this.exec.env.stats.ioError(p.plan.tier);
      }
    });
  }

  /** Writes the slot headers of the live items, in tiers that keep them. */
  async describe(mode: HeaderMode): Promise<void> {
    const { tiers, fileEngine, stats } = this.exec.env;
    const round = new TransferRound();
    if (mode === 'each') {
      const described: Placing[] = [];
      for (const p of this.live) {
        const tier = tiers[p.plan.tier]!;
        if (!tier.describe) continue;
        this.exec.headers.drop(p.plan.tier, p.plan.slot);
        tier.describe(round.file, [this.block(p)]);
        described.push(p);
      }
      if (described.length === 0) return;
      const r = await fileEngine.submit(round.file);
      if (!r.ok) stats.ioError(this.exec.fileTier());
      described.forEach((p, i) => {
        const error = r.errors[i];
        if (error === undefined) return;
        this.fail(p, failureOf(error));
        this.errors.push(error);
      });
      return;
    }
    const landing = tiers.map((): SlotBlock[] => []);
    const described: Placing[] = [];
    for (const p of this.live) {
      if (!tiers[p.plan.tier]!.describe) continue;
      landing[p.plan.tier]!.push(this.block(p));
      described.push(p);
    }
    if (mode === 'later') {
      // The headers only serve a later restart, so nobody waits for them (close() does, and so
      // does a sync: syncFiles()). A header that lands late over a reused slot names a block
      // whose checksum the new payload fails: a miss after restart, never wrong data.
      // Called even with nothing to describe: this run may be the last of the concurrent ones,
      // and then what the others gathered is written now.
      this.exec.headers.later(landing);
      return;
    }
    this.exec.headers.describeAll(round, landing);
    if (round.file.length === 0) return;
    const r = await fileEngine.submit(round.file);
    if (!r.ok) {
      // Headers are few and grouped; one failing leaves the new blocks undescribed.
      const why = failureOf(r.errors.find((e) => e !== undefined));
      for (const p of described) this.fail(p, why);
      stats.ioError(this.exec.fileTier());
    }
  }

  /** Durability before anyone is told the blocks are there: a failed sync fails them all. */
  async sync(): Promise<void> {
    const why = await this.exec.syncFiles();
    if (why === undefined) return;
    for (const p of this.live) this.fail(p, why);
  }

  /**
   * The index changes only now, all at once: live items committed, failed ones aborted. Tells the
   * change feed of the victims that left, and of the keys added when `added`.
   */
  commit(added: boolean): void {
    const { index, feed, stats } = this.exec.env;
    const keys: Key[] = [];
    const removed: Key[] = [];
    for (const p of this.items) {
      if (this.ended.has(p)) continue;
      this.ended.add(p);
      if (this.failed.has(p) || p.checksum === undefined) {
        this.giveBack(p, removed);
        continue;
      }
      settleCoded(this.exec.env.tiers, p.plan, true);
      index.commit(p.plan, this.exec.info(p.priority, p.depth, p.chain, p.call), {
        length: p.length,
        checksum: p.checksum,
      });
      this.committed.push(p);
      stats.tiers[p.plan.tier]!.bytesIn += p.length;
      if (feed.active) {
        if (added) keys.push(p.plan.key);
        feed.evictedBy(p.plan, removed);
      }
    }
    feed.changed(keys, removed);
  }

  /**
   * Gives the live items' slots to no key (BlockIndex.claim): their victims are gone, and the
   * slots stay taken until adopted or unclaimed. Failed items are aborted.
   */
  claim(): void {
    const { index, feed } = this.exec.env;
    const removed: Key[] = [];
    for (const p of this.items) {
      if (this.ended.has(p)) continue;
      this.ended.add(p);
      if (this.failed.has(p)) {
        this.giveBack(p, removed);
        continue;
      }
      settleCoded(this.exec.env.tiers, p.plan, true);
      index.claim(p.plan, this.exec.info(p.priority, p.depth, p.chain, p.call));
      this.committed.push(p);
      feed.evictedBy(p.plan, removed);
    }
    feed.changed([], removed);
  }

  /** Gives back what every item not yet committed or aborted holds. Idempotent. */
  abort(): void {
    const removed: Key[] = [];
    for (const p of this.items) {
      if (this.ended.has(p)) continue;
      this.ended.add(p);
      this.giveBack(p, removed);
    }
    this.exec.env.feed.changed([], removed);
  }

  /**
   * Gives back a failed item's slot and victims. Before its slot was handed out the victims get
   * their slots back (BlockIndex.abort); after, the slot may hold part of this block or bytes
   * that failed verification, so the victims keep the moves that landed (BlockIndex.discard):
   * a victim rolled back there would be a block whose only copy is damaged. Victims that left
   * the store go into `removed` (for the change feed).
   */
  private giveBack(p: Placing, removed: Key[]): void {
    const { index, feed, tiers } = this.exec.env;
    if (!this.written.has(p)) {
      settleCoded(tiers, p.plan, false);
      index.abort(p.plan);
      return;
    }
    // The victims' copies written down stay (settled as landed); the plan's own slot does not.
    for (const m of p.plan.moves) {
      if (m.toTier >= 0) tiers[m.toTier]?.settleStored?.(m.toSlot, true);
    }
    tiers[p.plan.tier]?.settleStored?.(p.plan.slot, false);
    index.discard(p.plan, this.exec.info(p.priority, p.depth, p.chain, p.call));
    if (feed.active) feed.evictedBy(p.plan, removed);
  }

  /** Lets other operations on the keys go on. */
  release(): void {
    this.hold.release();
  }

  /** Per key, why it failed ('no-space' wins: it is what a caller can act on). */
  failures(): Map<Key, PlaceFailure> {
    const out = new Map<Key, PlaceFailure>();
    for (const [p, why] of this.failed) {
      if (out.get(p.plan.key) !== 'no-space') out.set(p.plan.key, why);
    }
    return out;
  }

  private block(p: Placing): SlotBlock {
    const b = { slot: p.plan.slot, key: p.plan.key, length: p.length, checksum: p.checksum! };
    return p.stored === undefined ? b : { ...b, stored: p.stored };
  }
}

/**
 * Settles what a plan wrote into encoding tiers (its own slot, and the slots its victims moved
 * down to): kept on commit, dropped on abort (Tier.settleStored says why).
 */
function settleCoded(tiers: readonly Tier[], plan: Plan<Key>, keep: boolean): void {
  tiers[plan.tier]?.settleStored?.(plan.slot, keep);
  for (const m of plan.moves) if (m.toTier >= 0) tiers[m.toTier]?.settleStored?.(m.toSlot, keep);
}
