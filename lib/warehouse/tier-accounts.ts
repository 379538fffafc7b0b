/**
 * The tiers as a BlockIndex counts them: each one's name, capacity in slots, eviction policy,
 * slots used and counters (what stats().tiers reports), and the check of the configuration they
 * are made from.
 */
import type { EvictionPolicy } from '../policy/policy.js';
import { badArgument, guard, integer, options as readOptions } from '../core/validate.js';

export interface TierAccount<K> {
  readonly name: string;
  /** Capacity in slots (blocks). */
  readonly capacity: number;
  readonly policy: EvictionPolicy<K>;
  /** Slots in use or reserved. */
  used: number;
  readonly stats: TierCounters;
}

export interface TierCounters {
  hits: number;
  misses: number;
  inserts: number;
  evictions: number;
  promotions: number;
  demotions: number;
}

export interface TierConfig<K> {
  name: string;
  capacity: number;
  policy: EvictionPolicy<K>;
}

/** The tiers of a BlockIndex, checked and copied: a name, a capacity in slots and a policy each. */
export function checkTierConfigs<K>(tiers: unknown): TierConfig<K>[] {
  if (!guard('tiers', () => Array.isArray(tiers))) {
    throw badArgument('tiers', 'an array of { name, capacity, policy }', tiers);
  }
  return guard('tiers', () =>
    Array.from(tiers as unknown[], (t, i) => {
      const c = readOptions<TierConfig<K>>(t, `tiers[${i}]`, ['name', 'capacity', 'policy']);
      if (t === undefined) throw badArgument(`tiers[${i}]`, 'a tier', t);
      if (typeof c.name !== 'string') throw badArgument(`tiers[${i}].name`, 'a string', c.name);
      integer(c.capacity, `tiers[${i}].capacity`);
      if (typeof c.policy !== 'object' || c.policy === null) {
        throw badArgument(`tiers[${i}].policy`, 'an eviction policy', c.policy);
      }
      return c as TierConfig<K>;
    }),
  );
}

/** Fresh accounts for checked tiers: nothing used, every counter at zero. */
export function tierAccounts<K>(tiers: readonly TierConfig<K>[]): TierAccount<K>[] {
  return tiers.map((t) => ({
    name: t.name,
    capacity: t.capacity,
    policy: t.policy,
    used: 0,
    stats: { hits: 0, misses: 0, inserts: 0, evictions: 0, promotions: 0, demotions: 0 },
  }));
}
