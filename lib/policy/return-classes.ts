/**
 * The vocabulary of the `return-time` policy (return-time.ts): its key lists, lineage classes,
 * group lists and states, and its options.
 */

/** Key lists: resident blocks of groups, orphans, ghosts (remembered keys). */
export const LIVE = 0;
export const ORPHAN = 1;
export const GHOST = 2;
export const FIRST_NODE = 3;

/** Previous gap below this (ms) is short, below MEDIUM medium, else long. */
export const SHORT = 15_000;
export const MEDIUM = 120_000;
/** Lineage classes: first turn, then 3 gap classes × 4 run-length classes, then hinted 'soon'. */
export const SOON = 13;
/** Blocks a request read from another conversation's group (a shared prefix), with `shared`. */
export const SHARED = 14;
/** With `soonClasses`: a hinted request's class is its unhinted class (0 .. SOON-1) + SOON_BASE. */
export const SOON_BASE = 15;
export const CLASSES = SOON_BASE + SOON;
/** Group lists: one per class, then the dead list; list sentinels are groups 0 .. LISTS-1. */
export const DEAD = CLASSES;
export const LISTS = CLASSES + 1;
/** A group on no list. */
export const UNLISTED = 255;
/** Group states. */
export const FREE = 0;
export const PENDING = 1;
export const ALIVE = 2;
export const GONE = 3;

export interface ReturnTimeOptions {
  /** Keys remembered after eviction (to see a conversation come back), × capacity. Default 4. */
  ghosts?: number;
  /** A request continues a group when it re-reads at least this share of it. Default 0.3. */
  continues?: number;
  /** Bypass: a new block is not admitted when its group is worth less than the victim's. */
  bypass?: boolean;
  /**
   * Bypass only for a class with at least this many conversations resolved (returned or
   * forgotten); 0: always. Default 0.
   */
  bypassKnown?: number;
  /**
   * Exact victim: the lowest-valued live group of each class, not only its oldest (the index
   * need not fall with idle time: a class whose hazard rises). Default true.
   */
  exact?: boolean;
  /**
   * Live exposure: conversations still away count as at risk in the bins they have passed (not
   * only once they return or are forgotten). Default true.
   */
  live?: boolean;
  /**
   * A request hinted 'soon' keeps its gap and run-length class, as a class of its own next to
   * the unhinted one (instead of one 'soon' class for all). Default true.
   */
  soonClasses?: boolean;
  /**
   * Shared prefixes: blocks a request read from a group other than its predecessor's go to a
   * group of their own class, whose return is the next read by anyone. Default false.
   */
  shared?: boolean;
  /** Weight (in conversations) of the pooled curve in each class's curve. Default 16. */
  prior?: number;
  /** Counts halve every this many updates. Default 32,768. */
  halfLife?: number;
  /** Share of the current bin counted as still to be held (see SurvivalModel). Default 1. */
  firstBin?: number;
}

/** The options with their defaults filled in. */
export function withDefaults(o: ReturnTimeOptions): Required<ReturnTimeOptions> {
  return {
    ghosts: o.ghosts ?? 4,
    continues: o.continues ?? 0.3,
    bypass: o.bypass ?? false,
    bypassKnown: o.bypassKnown ?? 0,
    exact: o.exact ?? true,
    live: o.live ?? true,
    soonClasses: o.soonClasses ?? true,
    shared: o.shared ?? false,
    prior: o.prior ?? 16,
    halfLife: o.halfLife ?? 1 << 15,
    firstBin: o.firstBin ?? 1,
  };
}

/** The class of a lineage whose previous gap was `gap` ms after `quick` quick turns in a row. */
export function classOf(gap: number, quick: number): number {
  const g = gap < SHORT ? 0 : gap < MEDIUM ? 1 : 2;
  const q = quick === 0 ? 0 : quick <= 2 ? 1 : quick <= 7 ? 2 : 3;
  return 1 + g * 4 + q;
}
