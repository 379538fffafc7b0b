/**
 * Landing slots: free host-tier slots of the server's warehouse, claimed ahead of time and handed
 * to the transport, which reads the blocks of a one-step PUT straight into them. The put then
 * needs neither a second round trip (an offer) nor a copy: once the frame is complete, each slot
 * is given its key. Slots are claimed when puts arrive and given back after a quiet spell, so an
 * idle server's host tier holds only blocks.
 */
import type { LandingSlot, Warehouse } from '../warehouse/warehouse.js';
import type { Key } from '../warehouse/keys.js';
import type { Net } from './net.js';

/** At most this many bytes of the host tier are claimed for landing at once… */
export const LANDING_BYTES = 64 << 20;
/** …and at most this share of it, so landing never crowds out the blocks it serves. */
const LANDING_SHARE = 1 / 8;
/** Fewer slots than this are not worth claiming: a batch would rarely fit. */
const LANDING_MIN_SLOTS = 4;
/**
 * Claimed slots no put has used for this long go back to the store (by default). Long enough that
 * bursts of puts a few seconds apart find their slots waiting: claiming anew after a pause cost
 * the first requests of a burst tens of milliseconds (measured, bench net).
 */
const IDLE_MS = 30_000;

export class Landing {
  /** Claimed slots by token: held by the transport, or by a frame that landed in them. */
  private readonly slots = new Map<number, LandingSlot>();
  private nextToken = 1;
  /** Slots the transport holds now. */
  private held = 0;
  private claiming: Promise<void> | undefined;
  private idle: NodeJS.Timeout | undefined;
  private closed = false;
  /** How many slots to keep in the transport's hands while puts arrive. */
  readonly target: number;

  constructor(
    private readonly net: Net,
    private readonly warehouse: Warehouse,
    private readonly idleMs = IDLE_MS,
  ) {
    const wh = warehouse;
    const host = wh.stats().tiers[0];
    const byShare = host?.kind === 'host' ? Math.floor(host.capacityBlocks * LANDING_SHARE) : 0;
    const want = Math.min(Math.floor(LANDING_BYTES / wh.blockBytes), byShare);
    this.target = want >= LANDING_MIN_SLOTS && wh.takesBytesInPlace() ? want : 0;
  }

  /** Whether puts may land here at all (announced to clients, who then put in one step). */
  get enabled(): boolean {
    return this.target > 0;
  }

  /** A put arrived: tops the transport's slots up, and restarts the quiet-spell clock. */
  demand(): void {
    if (!this.enabled || this.closed) return;
    clearTimeout(this.idle);
    this.idle = setTimeout(() => this.release(), this.idleMs);
    this.idle.unref();
    if (this.claiming || this.held >= this.target) return;
    this.claiming = (async () => {
      try {
        const claimed = await this.warehouse.claim(this.target - this.held);
        if (this.closed) {
          this.warehouse.unclaim(claimed);
          return;
        }
        for (const slot of claimed) this.give(this.nextToken++, slot);
      } catch {
        // A warehouse that cannot make room now is asked again by the next put; meanwhile puts
        // land in receive areas and are copied.
      } finally {
        this.claiming = undefined;
      }
    })();
  }

  private give(token: number, slot: LandingSlot): void {
    this.slots.set(token, slot);
    this.net.land(slot.target, slot.offset, this.warehouse.blockBytes, token);
    this.held++;
  }

  /**
   * Stores the blocks a PUT's payload landed in (tokens in key order, with the checksums the
   * transport computed). Per key, whether this put stored it; slots of keys that were already
   * there go back to the transport.
   */
  async store(
    keys: readonly Key[],
    tokens: Uint32Array,
    checksums: Uint32Array,
  ): Promise<boolean[]> {
    this.held -= tokens.length;
    const slots = Array.from(tokens, (t) => this.slots.get(t)!);
    let stored: boolean[] | undefined;
    try {
      stored = await this.warehouse.land(keys, slots, checksums);
      return stored;
    } finally {
      tokens.forEach((token, i) => {
        if (stored?.[i]) {
          this.slots.delete(token);
        } else if (this.closed) {
          this.slots.delete(token);
          this.warehouse.unclaim([slots[i]!]);
        } else {
          this.give(token, slots[i]!);
        }
      });
      this.demand();
    }
  }

  /** Takes back the slots the transport holds and frees them. */
  private release(): void {
    const tokens = this.net.unland();
    this.held -= tokens.length;
    const slots = tokens.map((t) => {
      const slot = this.slots.get(t)!;
      this.slots.delete(t);
      return slot;
    });
    this.warehouse.unclaim(slots);
  }

  /** Before the transport closes: every claimed slot goes back to the store. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.idle);
    await this.claiming;
    this.release();
  }
}
