/** The caller's memory a request moves blocks to or from, held while the request needs it. */
import { nativeTargetOf, regionOf, type Target } from '../../core/engine.js';
import { requireHostMemory } from '../../core/bytes.js';
import type { NativeTarget } from '../../core/native.js';
import type { Region } from '../../core/region.js';

/** Where the blocks of a request live: key i's block is block `slots[i]` of `targets[i]`. */
export interface Memory {
  targets: readonly Target[];
  slots: readonly number[];
}

/** Memory of a request, held in flight: `at[i]` indexes key i's target in `targets`. */
export interface Held {
  targets: NativeTarget[];
  at: number[];
  release: () => void;
}

/**
 * Holds the memory of a request's keys in flight (each Region's inFlight) until release(), and
 * names each distinct target once: requests coalesced from several callers have many.
 */
export function hold(memory: Memory, count: number): Held {
  const regions: Region[] = [];
  const index = new Map<Target, number>();
  const targets: NativeTarget[] = [];
  const release = (): void => {
    for (const r of regions) r.inFlight.end();
  };
  const at: number[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const target = memory.targets[i]!;
      let n = index.get(target);
      if (n === undefined) {
        requireHostMemory(target, 'a peer transfer target');
        const region = regionOf(target);
        if (region) {
          region.assertOpen();
          region.inFlight.begin();
          regions.push(region);
        }
        n = targets.push(nativeTargetOf(target)) - 1;
        index.set(target, n);
      }
      at.push(n);
    }
  } catch (e) {
    release();
    throw e;
  }
  return { targets, at, release };
}
