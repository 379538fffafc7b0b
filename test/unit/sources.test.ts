/**
 * Source tiers registered from outside the warehouse layer: a kind nobody registered is refused by
 * name, and a registered one is a source (misses filled from it, kept locally) and a sink (puts
 * written through), listed in stats().tiers. This file imports the warehouse only, so the peer
 * layer's registration is not loaded.
 */
import { describe, expect, it } from 'vitest';

import type { Target } from '../../lib/core/engine.js';
import { chainKeys, type Key } from '../../lib/keys/keys.js';
import { registerSourceKind } from '../../lib/warehouse/sources.js';
import type { SourceTier, SourceTierOptions, TierStats } from '../../lib/warehouse/types.js';
import { Warehouse, type TierOptions } from '../../lib/warehouse/warehouse.js';

const BS = 4096;

/** A sink and source over a Map, the way a peer would be. */
class MapSource implements SourceTier {
  readonly kind = 'map' as never;
  readonly held = new Map<Key, Buffer>();
  asked = 0;
  constructor(readonly name: string) {}
  fetch(keys: readonly Key[], dst: Target, at: readonly number[]): Promise<boolean[]> {
    this.asked += keys.length;
    const out = dst as Buffer;
    return Promise.resolve(
      keys.map((k, j) => {
        const b = this.held.get(k);
        if (b) b.copy(out, at[j]! * BS);
        return b !== undefined;
      }),
    );
  }
  store(keys: readonly Key[], src: Target, at: readonly number[]): Promise<void> {
    const b = src as Buffer;
    keys.forEach((k, j) =>
      this.held.set(k, Buffer.from(b.subarray(at[j]! * BS, (at[j]! + 1) * BS))),
    );
    return Promise.resolve();
  }
  tierStats(): TierStats {
    return {
      name: this.name,
      kind: this.kind,
      capacityBlocks: 0,
      usedBlocks: this.held.size,
      hits: 0,
      misses: 0,
      bytesIn: 0,
      bytesOut: 0,
      evictions: 0,
      promotions: 0,
      demotions: 0,
      corrupt: 0,
    };
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

const opened: MapSource[] = [];
registerSourceKind('map', {
  check: (given) => given as SourceTierOptions,
  open: (options) => {
    const s = new MapSource((options as { name?: string }).name ?? 'map');
    opened.push(s);
    return Promise.resolve(s);
  },
});

const tiers = (kind: string): TierOptions[] =>
  [
    { kind: 'host', bytes: 8 * BS },
    { kind, name: 'm' },
  ] as unknown as TierOptions[];

describe('source tiers', () => {
  it('refuses a tier kind nobody registered with KVTIER_BAD_ARGUMENT naming it', async () => {
    await expect(Warehouse.open({ blockBytes: BS, tiers: tiers('peer') })).rejects.toMatchObject({
      code: 'KVTIER_BAD_ARGUMENT',
      message: expect.stringContaining('got "peer"') as unknown,
    });
  });

  it('writes puts through to a registered source and fills misses from it', async () => {
    const a = await Warehouse.open({ blockBytes: BS, tiers: tiers('map') });
    const source = opened.at(-1)!;
    const keys = chainKeys(
      new Uint32Array(3 * 4).map((_, i) => i),
      { blockTokens: 4 },
    ).keys();
    const data = Buffer.alloc(3 * BS);
    for (let i = 0; i < data.length; i++) data[i] = (i * 13) & 0xff;
    try {
      expect((await a.put(keys, data)).stored).toBe(3);
      expect([...source.held.keys()]).toEqual(keys);
      expect(await a.evict(keys)).toMatchObject({ removed: 3 });
      // Gone locally; the source serves them, reported as the tier past the local one.
      const dst = Buffer.alloc(4 * BS);
      const r = await a.get([...keys, keys[1]!], dst);
      expect(r.found).toEqual([true, true, true, true]);
      expect(r.tiers).toEqual([1, 1, 1, 1]);
      expect(dst.subarray(0, 3 * BS).equals(data)).toBe(true);
      expect(dst.subarray(3 * BS).equals(data.subarray(BS, 2 * BS))).toBe(true);
      expect(source.asked).toBe(3); // the twin was copied, not asked for
      // And kept: the next get is local.
      expect(a.lookup(keys).tiers).toEqual([0, 0, 0]);
      expect(a.stats().tiers.map((t) => t.name)).toEqual(['host', 'm']);
    } finally {
      await a.close();
    }
  });
});
