/**
 * Learned return times: per class of conversation, an online survival curve of the gap to the
 * conversation's next request, over log-spaced time bins, with conversations that have not come
 * back counted as censored (so "this conversation is over" is learned too). A thin class borrows
 * from the pooled curve.
 *
 * From the curve, a Gittins-style index: a block of a conversation idle for τ is worth the best
 * expected hits per block-millisecond over any horizon, max over B of
 * P(return in [τ, B]) / E[time held in [τ, B]]. No horizon parameter.
 */

/** Bins per octave of the gap (ms, past the first second). */
const PER_OCTAVE = 4;
/** Number of bins: 4 per octave up to 2^16 s (about 18 hours); the last bin holds the rest. */
export const BINS = 64;
/** Weight (in conversations) of the pooled curve in a class's estimate. */
const PRIOR = 4;
/** The hazard assumed before anything is known (per bin). */
const START_HAZARD = 0.05;

/** Bin of a gap or idle time in milliseconds. */
export function binOf(ms: number): number {
  if (!(ms > 0)) return 0;
  const b = Math.floor(PER_OCTAVE * Math.log2(1 + ms / 1000));
  return b < BINS ? b : BINS - 1;
}

/** Width of bin b in milliseconds (the last bin counts as one more bin of its kind). */
function widthOf(b: number): number {
  return 1000 * (2 ** ((b + 1) / PER_OCTAVE) - 2 ** (b / PER_OCTAVE));
}

const WIDTH = Float64Array.from({ length: BINS }, (_, b) => widthOf(b));

export class SurvivalModel {
  /** Per class and bin: returns seen in the bin, conversations at risk on entering it. */
  readonly events: Float64Array;
  readonly atRisk: Float64Array;
  /** The index table, per class and bin of the idle time; rebuilt every `refresh` updates. */
  readonly index: Float64Array;
  private updates = 0;
  /** Changes whenever the index table does. */
  version = 0;
  private readonly pool: number;
  /**
   * Exposure of conversations still away, per class and bin (a bin counts once passed), filled
   * by `exposure` at each rebuild: without it a long wait counts only once it is resolved, so
   * early on the late bins see the returns but not the waits and look far too likely.
   */
  readonly live: Float64Array;
  exposure: ((live: Float64Array) => void) | undefined = undefined;

  constructor(
    readonly classes: number,
    private readonly refresh = 64,
    /** Counts are halved every this many updates, so the curves follow a changing workload. */
    private readonly halfLife = 1 << 15,
    /** Weight (in conversations) of the pooled curve in a class's estimate. */
    private readonly prior = PRIOR,
    /**
     * Share of the current bin still to be held: 1 counts a whole bin although the conversation is
     * partway through it on average; 0.5 counts half.
     */
    private readonly firstBin = 1,
  ) {
    // The pooled curve is stored as one more class.
    this.pool = classes;
    this.events = new Float64Array((classes + 1) * BINS);
    this.atRisk = new Float64Array((classes + 1) * BINS);
    this.index = new Float64Array(classes * BINS);
    this.live = new Float64Array((classes + 1) * BINS);
    this.rebuild();
  }

  /** A conversation of class c came back after `gap` ms. */
  returned(c: number, gap: number): void {
    const b = binOf(gap);
    for (const k of [c, this.pool]) {
      const o = k * BINS;
      for (let i = 0; i <= b; i++) this.atRisk[o + i]!++;
      this.events[o + b]!++;
    }
    this.updated();
  }

  /** A conversation of class c was still away after `waited` ms when it was forgotten. */
  censored(c: number, waited: number): void {
    const b = binOf(waited);
    if (b === 0) return;
    for (const k of [c, this.pool]) {
      const o = k * BINS;
      for (let i = 0; i < b; i++) this.atRisk[o + i]!++;
    }
    this.updated();
  }

  /** Probability of a return within bin b, given the conversation reached it. */
  hazard(c: number, b: number): number {
    const p = this.pool * BINS + b;
    const pooled = (this.events[p]! + START_HAZARD) / (this.atRisk[p]! + this.live[p]! + 1);
    const o = c * BINS + b;
    return (this.events[o]! + this.prior * pooled) / (this.atRisk[o]! + this.live[o]! + this.prior);
  }

  /** The index of class c at idle time `idle` ms (hits per block-ms, times 1e6). */
  value(c: number, idle: number): number {
    return this.index[c * BINS + binOf(idle)]!;
  }

  private updated(): void {
    if (++this.updates % this.refresh === 0) this.rebuild();
    if (this.updates % this.halfLife === 0) {
      for (let i = 0; i < this.events.length; i++) {
        this.events[i]! *= 0.5;
        this.atRisk[i]! *= 0.5;
      }
    }
  }

  /** Recomputes the index table: O(classes × bins²), run every `refresh` updates. */
  rebuild(): void {
    this.version++;
    if (this.exposure) {
      this.live.fill(0);
      this.exposure(this.live);
    }
    const h = new Float64Array(BINS);
    for (let c = 0; c < this.classes; c++) {
      for (let b = 0; b < BINS; b++) h[b] = Math.min(1, this.hazard(c, b));
      for (let a = 0; a < BINS; a++) {
        let s = 1;
        let hits = 0;
        let held = 0;
        let best = 0;
        for (let b = a; b < BINS; b++) {
          const hb = h[b]!;
          hits += s * hb;
          held += s * WIDTH[b]! * (1 - hb / 2) * (b === a ? this.firstBin : 1);
          const v = hits / held;
          if (v > best) best = v;
          s *= 1 - hb;
          if (s < 1e-9) break;
        }
        this.index[c * BINS + a] = best * 1e6;
      }
    }
  }
}
