/**
 * Landing slots: free host-tier slots of the server's warehouse, claimed ahead of time and handed
 * to the transport, which reads the blocks of a one-step PUT straight into them. The put then
 * needs neither a second round trip (an offer) nor a copy: once the frame is complete, each slot
 * is given its key. Slots are claimed when puts arrive and given back after a quiet spell, so an
 * idle server's host tier holds only blocks.
 */
import { regionOf } from '../core/engine.js';
import type { LandingSlot, Warehouse } from '../warehouse/warehouse.js';
import type { CallOptions } from '../warehouse/calls.js';
import type { Key } from '../keys/keys.js';
import type { Net } from './net.js';
import { MsgType } from './protocol.js';

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
  /** Tokens the transport holds now. */
  private readonly out = new Set<number>();
  private nextToken = 1;
  private claiming: Promise<void> | undefined;
  private idle: NodeJS.Timeout | undefined;
  /** When a put last arrived (performance.now()). */
  private lastUse = 0;
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
    this.target = want >= LANDING_MIN_SLOTS && wh.hostSlots.inPlace() ? want : 0;
  }

  /** Whether puts may land here at all (announced to clients, who then put in one step). */
  get enabled(): boolean {
    return this.target > 0;
  }

  /** A put arrived: tops the transport's slots up, and restarts the quiet-spell clock. */
  demand(): void {
    if (!this.enabled || this.closed) return;
    // One timer per quiet spell, not one per put: it re-arms itself until puts stop.
    this.lastUse = performance.now();
    this.idle ??= this.idleTimer(this.idleMs);
    if (this.claiming || this.out.size >= this.target) return;
    this.claiming = (async () => {
      try {
        const claimed = await this.warehouse.hostSlots.claim(this.target - this.out.size);
        if (this.closed) {
          this.warehouse.hostSlots.giveBack(claimed);
          return;
        }
        for (const slot of claimed) {
          const token = this.nextToken++;
          this.slots.set(token, slot);
          this.give(token);
        }
      } catch {
        // A warehouse that cannot make room now is asked again by the next put; meanwhile puts
        // land in receive areas and are copied.
      } finally {
        this.claiming = undefined;
      }
    })();
  }

  /** Fires once no put came for idleMs, and gives the transport's slots back. */
  private idleTimer(ms: number): NodeJS.Timeout {
    const t = setTimeout(() => {
      const quiet = performance.now() - this.lastUse;
      if (quiet < this.idleMs) {
        this.idle = this.idleTimer(this.idleMs - quiet);
        return;
      }
      this.idle = undefined;
      this.release();
    }, ms);
    t.unref();
    return t;
  }

  /** Hands a claimed slot to the transport; its memory stays open while the transport has it. */
  private give(token: number): void {
    const slot = this.slots.get(token)!;
    this.net.land(slot.target, slot.offset, this.warehouse.blockBytes, token, MsgType.PUT);
    regionOf(slot.target)?.inFlight.begin();
    this.out.add(token);
  }

  /**
   * The transport handed a token back (in a frame, or by unland()); undefined for a token already
   * forgotten (a frame delivered after the transport closed).
   */
  private back(token: number): LandingSlot | undefined {
    const slot = this.slots.get(token);
    if (slot && this.out.delete(token)) regionOf(slot.target)?.inFlight.end();
    return slot;
  }

  /** Slots a frame landed in that no put took (a refused frame): back to the transport. */
  restore(tokens: Uint32Array): void {
    for (const token of tokens) {
      const slot = this.back(token);
      if (!slot) continue;
      if (this.closed) this.forget(token, slot);
      else this.give(token);
    }
  }

  private forget(token: number, slot: LandingSlot): void {
    this.slots.delete(token);
    this.warehouse.hostSlots.giveBack([slot]);
  }

  /**
   * Stores the blocks a PUT's payload landed in (tokens in key order, with the checksums the
   * transport computed). Per key, whether this put stored it; slots of keys that were already
   * there go back to the transport. `call`: the put's session, hint and request (RequestFlag.CALL).
   */
  async store(
    keys: readonly Key[],
    tokens: Uint32Array,
    checksums: Uint32Array,
    call: CallOptions = {},
  ): Promise<boolean[]> {
    const slots = Array.from(tokens, (t) => this.back(t)!);
    let stored: boolean[] | undefined;
    try {
      stored = await this.warehouse.hostSlots.land(keys, slots, checksums, call);
      return stored;
    } finally {
      tokens.forEach((token, i) => {
        if (stored?.[i]) this.slots.delete(token);
        else if (this.closed) this.forget(token, slots[i]!);
        else this.give(token);
      });
      this.demand();
    }
  }

  /**
   * A connection closed: the pieces a frame cut short held are the transport's again, maybe after
   * the idle timer last gave the transport's pieces back. It runs once more, so they go back to
   * the store after a quiet spell too.
   */
  connectionClosed(): void {
    if (!this.enabled || this.closed || this.out.size === 0) return;
    this.idle ??= this.idleTimer(this.idleMs);
  }

  /** Takes back the slots the transport holds and frees them. */
  private release(): void {
    for (const token of this.net.unland()) this.forget(token, this.back(token)!);
  }

  /** Before the transport closes: every slot it holds goes back to the store. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.idle);
    await this.claiming;
    this.release();
  }

  /**
   * After the transport closed: slots it held in frames that never reached JavaScript are free
   * too (slots of puts still being stored are freed as they finish).
   */
  afterTransportClosed(): void {
    for (const token of [...this.out]) this.forget(token, this.back(token)!);
  }
}
