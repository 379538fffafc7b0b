// close() writes blocks held only in host memory down to the file tier; when one cannot be written,
// the CloseError names the real reason: a copy that failed verification is not "no free slot".
import { afterAll, describe, expect, it } from 'vitest';

import { chainKeys, type CloseError, Region, Warehouse } from '../../lib/index.js';
import { randomBytes, tempDir } from '../helpers.js';

const BS = 16 * 1024;
const dirs: { remove(): void }[] = [];
afterAll(() => dirs.forEach((d) => d.remove()));

describe('close() reasons', () => {
  it('a host-only block damaged in memory is reported unwritten as corrupt, not as no space', async () => {
    const d = tempDir('kvtier-close-');
    dirs.push(d);
    const w = await Warehouse.open({
      blockBytes: BS,
      tiers: [
        { kind: 'host', bytes: 4 * BS },
        { kind: 'file', dir: d.path, bytes: 32 * BS },
      ],
    });
    const keys = chainKeys(
      Uint32Array.from({ length: 8 }, (_, i) => i),
      { blockTokens: 4 },
    ).keys();
    const src = randomBytes(2 * BS);
    expect((await w.put(keys, src)).stored).toBe(2);
    expect(w.lookup(keys).tiers).toEqual([0, 0]); // write-back: host memory only
    await w.hostSlots.lend([keys[1]!], async ([b]) => {
      (b!.target as Region).view(b!.offset, BS)[100]! ^= 0xff;
      return Promise.resolve();
    });
    const error = (await w.close().catch((e: unknown) => e)) as CloseError;
    expect(error).toMatchObject({ code: 'KVTIER_CORRUPT' });
    expect(error.unwritten).toEqual([keys[1]]);
    expect(error.message).toContain('failed verification');
    expect(error.message).not.toContain('no free slot');
    // The intact block was written down: a restart finds it, and not the damaged one.
    const again = await Warehouse.open({
      blockBytes: BS,
      tiers: [
        { kind: 'host', bytes: 4 * BS },
        { kind: 'file', dir: d.path, bytes: 32 * BS },
      ],
    });
    const dst = Buffer.alloc(2 * BS);
    const got = await again.get(keys, dst);
    expect(got.found).toEqual([true, false]);
    expect(dst.subarray(0, BS).equals(src.subarray(0, BS))).toBe(true);
    await again.close();
  });
});
