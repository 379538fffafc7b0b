// Tenants' per-put rules on every path: the minimum prefix and the tenant's priority on put and
// on the two-step path servers and engines use (reserve), and retention on the lending path.
import { describe, expect, it } from 'vitest';

import { hostBytes } from '../../lib/core/bytes.js';
import { blocksFor } from '../blocks.js';
import { BS, chain, count, hostTier, open, same, TOKENS } from './tenant-helpers.js';

describe('tenants: prefix and priority', () => {
  it("stores nothing of a chain below minPrefixTokens ('too-short')", async () => {
    const wh = await open({ tenants: [{ name: 'm', minPrefixTokens: 4 * TOKENS }] });
    const m = wh.tenant('m');
    const keys = chain(4, 'm');
    expect(await m.put(keys.slice(0, 3), blocksFor(keys.slice(0, 3), BS))).toEqual({
      stored: 0,
      present: 0,
      rejected: 3,
      status: ['too-short', 'too-short', 'too-short'],
    });
    expect(wh.keys()).toEqual([]);
    expect(m.stats().written).toEqual(count(0));
    expect((await m.put(keys, blocksFor(keys, BS))).stored).toBe(4);
    await wh.close();
  });

  it("puts at the tenant's priority: its blocks outlast older ones of a lower priority", async () => {
    const wh = await open(
      { tenants: [{ name: 'hi', priority: 5 }, { name: 'lo' }] },
      { tiers: hostTier(8) },
    );
    const kh = chain(4, 'hi');
    const kl = chain(8, 'lo');
    await wh.tenant('hi').put(kh, blocksFor(kh, BS));
    await wh.tenant('lo').put(kl.slice(0, 4), blocksFor(kl.slice(0, 4), BS));
    await wh.tenant('lo').put(kl.slice(4), blocksFor(kl.slice(4), BS));
    expect(wh.tenant('hi').lookup(kh).prefix).toBe(4);
    expect(wh.tenant('lo').lookup(kl.slice(0, 4)).prefix).toBe(0);
    await wh.close();
  });
});

describe('tenants: the two-step and lending paths (servers, engines)', () => {
  it("reserve() keeps put's rules: too short stores nothing, blocks take the tenant's priority", async () => {
    const wh = await open(
      {
        tenants: [
          { name: 'hi', priority: 5, minPrefixTokens: 2 * TOKENS },
          { name: 'lo', minPrefixTokens: 2 * TOKENS },
        ],
      },
      { tiers: hostTier(8) },
    );
    const hi = wh.tenant('hi');
    const lo = wh.tenant('lo');
    const short = await hi.hostSlots.reserve(chain(1, 'hi'));
    expect(short?.slots).toEqual(['rejected']);
    expect(await short!.commit()).toEqual({ stored: [], present: 0 });
    expect(wh.keys()).toEqual([]);
    expect(hi.stats().written.blocks).toBe(0);
    // Filled in place, then committed: stored as the tenant's, at its priority.
    const kh = chain(4, 'hi');
    const r = await hi.hostSlots.reserve(kh);
    expect(r).toBeDefined();
    const src = blocksFor(kh, BS);
    r!.slots.forEach((slot, i) => {
      if (typeof slot === 'string') throw new Error(`slot ${i}: ${slot}`);
      hostBytes(slot.target, slot.offset, BS).set(src.subarray(i * BS, (i + 1) * BS));
    });
    expect((await r!.commit()).stored).toEqual([0, 1, 2, 3]);
    expect(hi.stats().written.blocks).toBe(4);
    // A lower-priority tenant filling the tier evicts its own older blocks, not these.
    const kl = chain(8, 'lo');
    await lo.put(kl.slice(0, 4), blocksFor(kl.slice(0, 4), BS));
    await lo.put(kl.slice(4), blocksFor(kl.slice(4), BS));
    expect(hi.lookup(kh).prefix).toBe(4);
    const dst = Buffer.alloc(4 * BS);
    expect((await hi.get(kh, dst)).count).toBe(4);
    expect(same(kh, dst)).toBe(true);
    await wh.close();
  });

  it('lend() serves no block past its retention, and counts it expired, not read', async () => {
    let now = 1_000_000;
    const wh = await open({
      now: () => now,
      retentionClasses: { short: 60_000 },
      tenants: [{ name: 'a', retention: 'short' }],
    });
    const a = wh.tenant('a');
    const k = chain(1, 'a');
    await a.put(k, blocksFor(k, BS));
    now += 120_000; // two lifetimes later, before any timer or operation swept
    const lent = await a.hostSlots.lend(k, (places) =>
      Promise.resolve(places.map((p) => p !== undefined)),
    );
    expect(lent).toEqual([false]);
    expect(a.stats().read.blocks).toBe(0);
    expect(a.stats().expired.blocks).toBe(1);
    await wh.close();
  });
});
