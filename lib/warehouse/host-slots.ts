/**
 * Host slots: the narrow store interface for servers that move bytes straight between the network
 * (or an engine's shared memory) and the host tier, without a copy. The peer server and the engine
 * channel use it through `warehouse.hostSlots`, not through the Warehouse's public methods:
 *
 * - inPlace: whether bytes may be written straight into host-tier slots at all;
 * - claim / land / giveBack: slots that belong to no key yet, filled as bytes arrive, given their
 *   keys once those are read (land), or given back;
 * - reserve: slots for known keys, committed once the bytes are in place;
 * - lend: host-tier copies pinned while the network reads them;
 * - persist: durable copies in the file tier for the server's durable puts.
 *
 * Every placement goes through the placement executor, so the change feed, statistics and locks
 * see these blocks exactly as they see a put's.
 */
import { DeviceRegion } from '../core/gpu/device-region.js';
import { KvtierError } from '../core/errors.js';
import { integer } from '../core/validate.js';
import { toKeys, type Key, type KeyLike } from '../keys/keys.js';
import { ABSENT } from './block-index.js';
import { checkCallOptions, type CallNumbers, type CallOptions } from './calls.js';
import { durableTier, persistTier, type Parts } from './configure.js';
import type { Placing, PlacementBatch } from './placement.js';
import type { SlotPlace } from './tier.js';
import type { LandingSlot, LentBlock, Reservation } from './types.js';

/** Write-down batches: bounded so one failing round costs little. */
export const FLUSH_BATCH = 64;

export class HostSlots {
  /** Names the plans of claim(), which are for slots rather than keys. */
  private landingSerial = 0;

  constructor(
    private readonly parts: Parts,
    /** Throws KVTIER_CLOSED once the warehouse closes; ends leases whose time has come. */
    private readonly enter: (expire: boolean) => void,
    /** The warehouse's session and request numbers (calls.ts). */
    private readonly calls: CallNumbers,
  ) {}

  /** Whether bytes may be written straight into host-tier slots (reserve(), claim()). */
  inPlace(): boolean {
    const p = this.parts;
    return (
      p.tiers[0]!.kind === 'host' &&
      !p.writeThrough &&
      p.durability !== 'sync' &&
      !p.sources.hasTiers
    );
  }

  /**
   * Claims up to `count` host-tier slots, making room as a put does, that belong to no key yet, so
   * the network can write blocks into the store before anyone has read their keys. land() gives a
   * claimed slot its key; giveBack() frees it. Resolves [] when bytes cannot go in place.
   */
  async claim(count: number): Promise<LandingSlot[]> {
    this.enter(true);
    integer(count, 'count');
    if (!this.inPlace() || count < 1) return [];
    const { index, placement, inflight } = this.parts;
    return inflight.track(
      (async () => {
        const items: Placing[] = [];
        for (let n = 0; n < count; n++) {
          // A name no key can have (keys are hex): the plan is for a slot, not for a key.
          const plan = index.plan(`landing ${this.landingSerial++}`, 0, placement.info(0, 0, 1));
          if (!plan) break;
          items.push({ plan, length: this.parts.blockBytes, priority: 0, depth: 0, chain: 1 });
        }
        const batch = await placement.begin(items);
        try {
          const live = this.hostMemory(batch);
          batch.claim();
          return live.map(({ p, place }) => ({
            target: place.target,
            offset: place.offset,
            slot: p.plan.slot,
          }));
        } catch (e) {
          batch.abort();
          throw e;
        } finally {
          batch.release();
        }
      })(),
    );
  }

  /**
   * Gives claimed slots whose bytes have arrived their keys: keys[i]'s block is in slots[i], and
   * checksums[i] is its CRC-32C (computed as it arrived). Per key, whether it was stored; a key
   * already stored (or repeated in `keys`) is not, and its slot stays claimed. `options`: the
   * put's session, hint and request, as put's.
   */
  async land(
    keys: readonly Key[],
    slots: readonly LandingSlot[],
    checksums: ArrayLike<number>,
    options: CallOptions = {},
  ): Promise<boolean[]> {
    this.enter(false);
    if (slots.length !== keys.length || checksums.length !== keys.length) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', 'one slot and one checksum per key are needed');
    }
    const { locks, index, placement, stats, feed, inflight, blockBytes: bs } = this.parts;
    const call = this.calls.next(checkCallOptions({ ...options }));
    return inflight.track(
      (async () => {
        while (locks.unsettled(keys)) await locks.settle(keys);
        // From the check above to the last adopt() nothing else runs: no await in between.
        const seen = new Set<Key>();
        const added: Key[] = [];
        const stored = keys.map((key, i) => {
          if (seen.has(key) || index.get(key)) return false;
          seen.add(key);
          index.adopt(key, 0, slots[i]!.slot, placement.info(0, i, keys.length, call), {
            length: bs,
            checksum: checksums[i]! >>> 0,
          });
          stats.tiers[0]!.bytesIn += bs;
          added.push(key);
          return true;
        });
        feed.changed(added, []);
        return stored;
      })(),
    );
  }

  /** Frees claimed slots that will not be landed in. */
  giveBack(slots: readonly LandingSlot[]): void {
    for (const s of slots) this.parts.index.unclaim(0, s.slot);
  }

  /**
   * Reserves host-tier slots for keys whose bytes someone else (the network) will write there, so
   * a put needs no copy. Per key the reservation holds the memory to fill, or 'present' or
   * 'rejected'. The keys and the slots' previous owners are held until commit() (checksums the
   * filled slots and stores them) or abort(). Resolves undefined when bytes cannot go in place,
   * or the batch is larger than the host tier takes at once: the caller then puts from its own
   * buffer. `priority` is the blocks' eviction priority, as put's.
   */
  async reserve(
    keys: readonly KeyLike[],
    priority = 0,
    options: CallOptions = {},
  ): Promise<Reservation | undefined> {
    this.enter(true);
    const list = toKeys(keys);
    const call = this.calls.next(checkCallOptions({ ...options }));
    if (!this.inPlace()) return undefined;
    const { locks, index, placement, inflight, blockBytes: bs } = this.parts;
    let finish!: () => void;
    void inflight.track(new Promise<void>((resolve) => (finish = resolve)));
    let batch: PlacementBatch | undefined;
    try {
      while (locks.unsettled(list)) await locks.settle(list);
      const slots: Reservation['slots'] = [];
      const items: Placing[] = [];
      const seen = new Set<Key>();
      let spill = false;
      list.forEach((key, i) => {
        if (seen.has(key) || index.get(key)) {
          slots.push('present');
          return;
        }
        seen.add(key);
        const plan = index.plan(key, 0, placement.info(priority, i, list.length, call));
        slots.push('rejected'); // until its slot is ready (below)
        if (plan) items.push({ plan, length: bs, priority, depth: i, chain: list.length, call });
        else spill = true;
      });
      if (spill) {
        // More than the host tier can take at once: put() spills such a batch into the tiers
        // below, which in-place writing cannot do.
        for (const p of items) index.abort(p.plan);
        finish();
        return undefined;
      }
      batch = await placement.begin(items);
      const live = batch;
      for (const { p, place } of this.hostMemory(live)) {
        slots[p.depth] = { target: place.target, offset: place.offset, length: bs, checksum: 0 };
      }
      const present = slots.filter((x) => x === 'present').length;
      let ended = false;
      const end = (): void => {
        live.release();
        finish();
      };
      return {
        slots,
        commit: async (checksums?: ArrayLike<number>) => {
          if (ended) throw new KvtierError('KVTIER_CLOSED', 'the reservation has ended');
          ended = true;
          try {
            await live.checksumInPlace(checksums);
            // Listeners (the cluster index) hear of these as of any put.
            live.commit(true);
            return { stored: live.committed.map((p) => p.depth), present };
          } catch (e) {
            live.abort();
            throw e;
          } finally {
            end();
          }
        },
        abort: () => {
          if (ended) return;
          ended = true;
          live.abort();
          end();
        },
      };
    } catch (e) {
      batch?.abort();
      batch?.release();
      finish();
      throw e;
    }
  }

  /** Whether persist() can make blocks durable: the last tier is a file tier. */
  get persists(): boolean {
    return persistTier(this.parts) !== ABSENT;
  }

  /**
   * For durable puts (docs/protocol.md, "Durable puts"): gives each stored key of `keys` a copy in
   * the file tier (written down from the tier it is in, as close() does for blocks held only in
   * memory) and syncs the file tier, headers included. Resolves per key whether its file copy is
   * there and synced: a key that is not stored, or found no room, is not. However the block
   * arrived (copied, placed in reserved slots, landed), this is what makes it survive a crash.
   */
  async persist(keys: readonly Key[]): Promise<boolean[]> {
    this.enter(false);
    const last = persistTier(this.parts);
    if (last === ABSENT) {
      throw new KvtierError('KVTIER_NOT_AVAILABLE', 'durable puts need a file tier');
    }
    const { locks, index, placement, inflight } = this.parts;
    return inflight.track(
      (async () => {
        while (locks.unsettled(keys)) await locks.settle(keys);
        const items: { key: Key; from: SlotPlace }[] = [];
        const pinned: Key[] = [];
        for (const key of new Set(keys)) {
          const e = index.get(key);
          if (!e || e.slots[last] !== ABSENT) continue;
          const top = index.topTier(key);
          // Pinned, so that nothing evicts the source while it is copied down.
          index.pin(key);
          pinned.push(key);
          items.push({ key, from: placement.place(top, e.slots[top]!) });
        }
        let synced: boolean;
        try {
          for (let i = 0; i < items.length; i += FLUSH_BATCH) {
            await placement.copyTo(items.slice(i, i + FLUSH_BATCH), last);
          }
          // Under durability 'sync' every file copy was synced before it was committed.
          synced =
            (items.length === 0 && durableTier(this.parts) !== ABSENT) ||
            (await placement.syncFiles()) === undefined;
        } finally {
          for (const k of pinned) index.unpin(k);
        }
        return keys.map((k) => synced && (index.get(k)?.slots[last] ?? ABSENT) !== ABSENT);
      })(),
    );
  }

  /**
   * Lends the host-tier copies of `keys` to `use` without copying them out (undefined for a key
   * not in the host tier). The lent blocks are pinned until `use` settles, so the network can read
   * their slots while nobody rewrites them. Lent blocks count as hits; their checksums are passed
   * on for the reader to verify.
   */
  async lend<T>(
    keys: readonly KeyLike[],
    use: (places: (LentBlock | undefined)[]) => Promise<T>,
    options: CallOptions = {},
  ): Promise<T> {
    this.enter(false);
    const list = toKeys(keys);
    const call = this.calls.next(checkCallOptions({ ...options }));
    const { locks, index, placement, stats, inflight, tiers } = this.parts;
    return inflight.track(
      (async () => {
        while (locks.unsettled(list)) await locks.settle(list);
        const pinned: Key[] = [];
        const places = list.map((k, i): LentBlock | undefined => {
          const e = index.get(k);
          if (!e || e.slots[0] === ABSENT || tiers[0]!.kind !== 'host') return undefined;
          const p = placement.place(0, e.slots[0]!);
          if (p.kind !== 'memory' || !index.pin(k)) return undefined;
          pinned.push(k);
          index.access(k, placement.info(0, i, list.length, call));
          // A peer GET reads host blocks here, not through reads.ts: staging must hear of it too.
          this.parts.staging?.read(k, 0);
          stats.tiers[0]!.bytesOut += e.length;
          return { target: p.target, offset: p.offset, length: e.length, checksum: e.checksum };
        });
        stats.counters.gets++;
        stats.counters.hits += pinned.length;
        try {
          return await use(places);
        } finally {
          for (const k of pinned) index.unpin(k);
        }
      })(),
    );
  }

  /** The batch's live items whose slots are host memory; the others fail (aborted at the end). */
  private hostMemory(
    batch: PlacementBatch,
  ): { p: Placing; place: SlotPlace & { kind: 'memory' } }[] {
    const out: { p: Placing; place: SlotPlace & { kind: 'memory' } }[] = [];
    for (const p of batch.live) {
      const place = this.parts.placement.place(0, p.plan.slot);
      // Only host memory can take bytes straight from the network.
      if (place.kind !== 'memory' || place.target instanceof DeviceRegion) {
        batch.drop(p, 'io-error');
        continue;
      }
      out.push({ p, place });
    }
    return out;
  }
}
