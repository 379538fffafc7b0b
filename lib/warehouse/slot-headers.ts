/**
 * Slot headers and syncs of the file tier: the placement pipeline's describe and sync steps
 * (placement.ts), and the 'later' headers it gathers across concurrent puts into one write.
 *
 * A header is only ever written after its payload, so holding it back changes nothing on disk but
 * when the slot becomes visible to a restart. A newer header for the slot (written directly, or
 * gathered) replaces a gathered one, and an evicted slot's is dropped before its zero header is
 * written (drop), so a late header never brings back a block or overwrites a newer one.
 */
import type { IoEngine } from '../core/engine.js';
import type { InFlight } from '../core/inflight.js';
import { failureOf, type PlaceFailure } from './make-room.js';
import type { StatsBook } from './stats.js';
import type { SlotBlock, Tier } from './tier.js';
import { TransferRound } from './transfers.js';

/**
 * 'later' headers gathered before they are written: at most this many blocks' worth, and for at
 * most LATER_HEADER_MS. Each header write is one more request on the ring, and a small one at the
 * far end of the file: writing those of 32-block puts one by one cost a 256 KiB put pass about a
 * tenth of its throughput (issue 13, "Speed").
 */
export const LATER_HEADER_BLOCKS = 256;
const LATER_HEADER_MS = 20;

/** The Warehouse's parts headers and syncs use (placement.ts's PlacementEnv has them). */
export interface HeaderEnv {
  readonly tiers: readonly Tier[];
  readonly fileEngine: IoEngine;
  readonly stats: StatsBook;
  readonly inflight: InFlight;
}

export class SlotHeaders {
  /** File-tier header writes not waited for ('later'): a sync waits for them first. */
  private readonly written = new Set<Promise<void>>();
  /** 'later' headers not written yet, per tier and slot. */
  private readonly gathered = new Map<number, Map<number, SlotBlock>>();
  private count = 0;
  private since = 0;
  /** Runs with 'later' headers between begin and their headers: what may join a gathered write. */
  private runs = 0;
  /** Writes what is gathered once LATER_HEADER_MS have passed, if nothing did before. */
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly env: HeaderEnv) {}

  /** A run whose headers will be gathered has begun: what is gathered may wait for it. */
  enter(): void {
    this.runs++;
  }

  /**
   * That run has moved its bytes (its headers follow), or failed before its headers; `flush`
   * (failed): it may have been what others were waiting to join, so if it was the last, what is
   * gathered is written now.
   */
  leave(flush: boolean): void {
    this.runs--;
    if (flush && this.runs === 0) this.flush();
  }

  /** The tier that keeps slot headers and syncs (the file tier), if any: where header and sync
   * failures are counted. */
  fileTier(): number | undefined {
    const t = this.env.tiers.findIndex((tier) => tier.describe !== undefined);
    return t < 0 ? undefined : t;
  }

  /** Syncs the file tiers once pending header writes are down; resolves with why it failed. */
  async sync(): Promise<PlaceFailure | undefined> {
    this.flush();
    await Promise.allSettled([...this.written]);
    const sync = new TransferRound();
    for (const t of this.env.tiers) t.sync?.(sync.file);
    if (sync.file.length === 0) return undefined;
    const r = await this.env.fileEngine.submit(sync.file);
    if (r.ok) return undefined;
    this.env.stats.ioError(this.fileTier());
    return failureOf(r.errors.find((e) => e !== undefined));
  }

  /** Adds the header writes of blocks landing in each tier that keeps headers. */
  describeAll(round: TransferRound, landing: readonly SlotBlock[][]): void {
    landing.forEach((blocks, t) => {
      const tier = this.env.tiers[t]!;
      if (blocks.length === 0 || !tier.describe) return;
      for (const b of blocks) this.drop(t, b.slot);
      tier.describe(round.file, blocks);
    });
  }

  /**
   * Gathers 'later' headers (`landing`, per tier); writes what is gathered once no other such run
   * is under way (nothing more would join it soon), or enough has gathered, or it has waited long
   * enough.
   */
  later(landing: readonly SlotBlock[][]): void {
    landing.forEach((blocks, t) => {
      if (blocks.length === 0) return;
      let slots = this.gathered.get(t);
      if (!slots) this.gathered.set(t, (slots = new Map<number, SlotBlock>()));
      for (const b of blocks) {
        if (this.count === 0) this.since = performance.now();
        if (!slots.has(b.slot)) this.count++;
        slots.set(b.slot, b);
      }
    });
    if (
      this.runs === 0 ||
      this.count >= LATER_HEADER_BLOCKS ||
      performance.now() - this.since >= LATER_HEADER_MS
    ) {
      this.flush();
    } else if (this.count > 0 && this.timer === undefined) {
      // Puts that keep overlapping must not hold headers for ever: written after
      // LATER_HEADER_MS at the latest. Unref'd: it never keeps the process alive, and close()
      // flushes (and clears it) before the engines close.
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.flush();
      }, LATER_HEADER_MS);
      this.timer.unref();
    }
  }

  /** Forgets the gathered header of a slot about to get another header (or a zero one). */
  drop(tier: number, slot: number): void {
    if (this.count > 0 && this.gathered.get(tier)?.delete(slot)) this.count--;
  }

  /** Writes the gathered 'later' headers, not waited for. */
  flush(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.count === 0) return;
    const landing = this.env.tiers.map((_, t) => [...(this.gathered.get(t)?.values() ?? [])]);
    this.gathered.clear();
    this.count = 0;
    const round = new TransferRound();
    this.describeAll(round, landing);
    if (round.file.length > 0) this.writeLater(round);
  }

  /** Header writes nobody waits for: counted in flight (close waits), and by sync(). */
  private writeLater(round: TransferRound): void {
    const written = this.env.fileEngine.submit(round.file).then((r) => {
      if (!r.ok) this.env.stats.ioError(this.fileTier());
    });
    this.written.add(written);
    const forget = (): void => void this.written.delete(written);
    written.then(forget, forget);
    void this.env.inflight.track(written);
  }
}
