/** The eviction policies kvtier ships, by name. */
import { KvtierError } from '../core/errors.js';
import { BeladyPolicy } from './belady.js';
import { ArcPolicy } from './arc.js';
import { DensityPolicy } from './density.js';
import { LeafLruPolicy } from './lru-leaf.js';
import { LruPolicy } from './lru.js';
import { PriorityPolicy } from './priority.js';
import { ReturnTimePolicy } from './return-time.js';
import type { EvictionPolicy, PolicyFactory } from './policy.js';

export type { AccessInfo, EvictionPolicy, PolicyFactory } from './policy.js';
export { BeladyPolicy } from './belady.js';
export { LruPolicy } from './lru.js';
export { PriorityPolicy } from './priority.js';

interface PolicyEntry {
  create: PolicyFactory;
  /** Needs AccessInfo.next (the future): only the simulator can run it. */
  offline: boolean;
  description: string;
}

const registry = new Map<string, PolicyEntry>([
  ['lru', { create: () => new LruPolicy(), offline: false, description: 'least recently used' }],
  [
    'lru-leaf',
    {
      create: () => new LeafLruPolicy(),
      offline: false,
      description: 'LRU, deepest block of a request first',
    },
  ],
  [
    'arc',
    {
      create: (c) => new ArcPolicy(c),
      offline: false,
      description: 'adaptive replacement cache (recency and frequency, ghost-tuned)',
    },
  ],
  [
    'arc-leaf',
    {
      create: (c) => new ArcPolicy(c, { leafFirst: true }),
      offline: false,
      description: 'ARC, deepest block of a request first',
    },
  ],
  [
    'arc-tree',
    {
      create: (c) => new ArcPolicy(c, { leafFirst: true, orphans: true }),
      offline: false,
      description: 'ARC on the prefix tree: deepest block of a request first, orphans first',
    },
  ],
  [
    'return-time',
    {
      // A tier below the top one sees demotions, not requests: nothing to learn return times
      // from (its inserts would join whichever request is running). arc-tree decides there:
      // three tiers on the agentic trace, 95.17 % of prefix hits against 92.28 % with
      // return-time in every tier (docs/policies.md).
      create: (c, tier) =>
        (tier ?? 0) === 0
          ? new ReturnTimePolicy(c)
          : new ArcPolicy(c, { leafFirst: true, orphans: true }),
      offline: false,
      description:
        'learned return times per conversation class: groups deepest first, lowest Gittins index (arc-tree below the top tier)',
    },
  ],
  [
    'density',
    {
      create: (c) => new DensityPolicy(c),
      offline: false,
      description: 'hit density by age and use class, learned online (LHD-style; experimental)',
    },
  ],
  [
    'belady',
    {
      create: () => new BeladyPolicy(),
      offline: true,
      description: 'offline optimum (evicts the block used farthest ahead); simulator only',
    },
  ],
]);

/** Adds (or replaces) a named policy: for experiments and embedders. */
export function registerPolicy(
  name: string,
  create: PolicyFactory,
  options: { offline?: boolean; description?: string } = {},
): void {
  registry.set(name, {
    create,
    offline: options.offline ?? false,
    description: options.description ?? name,
  });
}

/**
 * The policy a tier gets when none is named: `return-time` closes 18.8 % of the LRU-to-Belady gap
 * over the nine reference points and 43 % on the agentic traces, `arc-tree` 10.1 % and 14.8 %
 * (docs/policies.md).
 */
export const DEFAULT_POLICY = 'return-time';

export function policyNames(options: { offline?: boolean } = {}): string[] {
  return [...registry].filter(([, e]) => options.offline !== false || !e.offline).map(([n]) => n);
}

export function policyInfo(name: string): { offline: boolean; description: string } | undefined {
  const e = registry.get(name);
  return e && { offline: e.offline, description: e.description };
}

/**
 * A new policy instance for tier `tier` (0: the top one) of `capacity` blocks; unknown names are
 * a bad argument.
 */
export function policyByName<K>(name: string, capacity: number, tier = 0): EvictionPolicy<K> {
  const e = registry.get(name);
  if (!e) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `unknown policy "${name}" (known: ${policyNames().join(', ')})`,
    );
  }
  // Online policies honour engine-given priorities (a no-op while every priority is 0).
  if (e.offline) return e.create<K>(capacity, tier);
  return new PriorityPolicy<K>((c) => e.create<K>(c, tier), capacity);
}

/** Whether a policy needs to see the future (AccessInfo.next). */
export function isOffline(name: string): boolean {
  return registry.get(name)?.offline ?? false;
}
