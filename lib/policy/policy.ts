/**
 * Eviction and admission policies. One policy instance decides for one tier. The same code runs
 * inside the Warehouse and inside `kvtier sim`, so what the simulator measures is what ships.
 *
 * Keys are opaque to a policy: strings (hex block keys) in the Warehouse, numbers in the
 * simulator. Policies must not allocate per access on the hot path where avoidable: the simulator
 * replays tens of millions of accesses.
 */

/** What the caller knows about one access or insertion. */
export interface AccessInfo {
  /** A clock that never goes backwards: milliseconds in the Warehouse, trace time in the sim. */
  now: number;
  /** Engine-given priority; higher should survive longer (a system prompt over a one-off). */
  priority: number;
  /** Position of the block in its request's chain (0 = the root block). */
  depth: number;
  /** Number of blocks in the request's chain. */
  chainLength: number;
  /**
   * Offline policies only (Belady, in `kvtier sim`): when the key will be read next, on the same
   * clock as an access counter (Infinity: never). Online callers leave it out.
   */
  next?: number;
  /**
   * Optional: which request this access belongs to (any value that changes from one request to
   * the next). Without it, policies that need request boundaries take a change of `now` or
   * `chainLength` as a new request.
   */
  request?: number;
  /** Optional: the engine's conversation (session) id, when it gives one. */
  session?: number;
  /**
   * Optional engine hint about the conversation after this request: 'soon' (waiting for a tool,
   * back soon) or 'closed' (the conversation is over).
   */
  hint?: 'soon' | 'closed' | undefined;
  /**
   * Optional: the block is placed by predictive prefetch, not by a request. A placement that
   * sees it calls stage() where the policy has it (the key rejoins its old group) and inserts
   * only when stage() does not know the key.
   */
  staged?: boolean;
}

export interface EvictionPolicy<K> {
  readonly name: string;
  /** Keys currently tracked as resident. */
  readonly size: number;
  /** The key became resident in the tier. */
  insert(key: K, info: AccessInfo): void;
  /** A resident key was read (or written again). */
  touch(key: K, info: AccessInfo): void;
  /** The key left the tier (evicted, demoted, deleted). */
  remove(key: K): void;
  /**
   * Optional: the key was never really there (a placement told at plan time, then aborted; a
   * landing slot's placeholder name): forget it without the trace remove() may keep (a ghost),
   * which would count a later insertion of the key as a return. Policies without it get remove().
   */
  forget?(key: K): void;
  /**
   * The key to evict next, among those for which `evictable` holds (pinned or in-flight keys do
   * not). Does not remove it: the caller calls remove() once the eviction is done.
   */
  victim(evictable?: (key: K) => boolean): K | undefined;
  /** A lookup missed this key in this tier (for policies that learn from misses/ghosts). */
  miss?(key: K, info: AccessInfo): void;
  /**
   * Whether a new key should displace `victim` in a full tier. Policies without an admission
   * filter admit everything.
   */
  admit?(key: K, info: AccessInfo, victim: K): boolean;
  /**
   * Optional (predictive prefetch): keys of blocks that left this tier and whose conversation is
   * predicted to return soonest, best first (each group's blocks root first), at most `maxKeys`.
   */
  forecast?(now: number, maxKeys: number): K[];
  /** Optional: what a key (resident or remembered) is worth at `now`; -1 when not known. */
  worth?(key: K, now: number): number;
  /** Optional: what the block victim() would choose next is worth at `now` (0: worthless). */
  victimWorth?(now: number): number;
  /**
   * Optional: a forecast key came back into the tier by prefetch, not by a request: it rejoins
   * its old group instead of starting a request of its own. False when the key is not known
   * (the caller then inserts it).
   */
  stage?(key: K, now: number): boolean;
}

/**
 * Creates a policy for a tier of `capacity` blocks; `tier` is the tier's position (0: the top
 * tier, where requests arrive; below it, tiers fed by demotion). Factories may ignore it.
 */
export type PolicyFactory = <K>(capacity: number, tier?: number) => EvictionPolicy<K>;

/** policy.forget(key) where the policy has it, else remove(key). */
export function forget<K>(policy: EvictionPolicy<K>, key: K): void {
  if (policy.forget) policy.forget(key);
  else policy.remove(key);
}
