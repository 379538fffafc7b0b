// A file tier that stores blocks encoded (docs/codecs.md, "In the Warehouse"), on real files:
// blocks forced down from a tiny host tier come back as exactly decode(encode(x)) (BlockCodec's own
// result) while the host copies stay x; the tier holds bytes / encodedBytes blocks; a reopened
// directory serves the same bytes; damage on disk is a miss counted corrupt, never a wrong block;
// a directory is never read with another codec.
import { closeSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { BlockCodec, type CodecSpec } from '../../lib/core/codec.js';
import { isKvtierError } from '../../lib/core/errors.js';
import { native } from '../../lib/core/native.js';
import {
  describeKvLayout,
  Warehouse,
  type FileTierCodecOptions,
  type WarehouseOptions,
} from '../../lib/index.js';
import { tempDir } from '../helpers.js';
import {
  blockBytesOf,
  CODECS,
  keysOf,
  kvBlocks,
  layoutOf,
  options,
  roundTrip,
  SHAPE,
} from './codec-tier-helpers.js';

const dirs: { remove(): void }[] = [];
afterAll(() => dirs.forEach((d) => d.remove()));
function dir(): string {
  const d = tempDir('kvtier-whc-');
  dirs.push(d);
  return d.path;
}

async function rejectsWith(
  p: Promise<unknown>,
  code: 'KVTIER_BAD_ARGUMENT',
  pattern: RegExp,
): Promise<void> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(isKvtierError(e, code), String(e)).toBe(true);
  expect((e as Error).message).toMatch(pattern);
}

interface Meta {
  headerBytes: number;
  payloadOffset: number;
  slotBytes: number;
  slots: number;
  storedBytes?: number;
  version: number;
  codec?: Record<string, unknown>;
}
const metaOf = (d: string) => JSON.parse(readFileSync(join(d, 'kvtier.meta.json'), 'utf8')) as Meta;

/** Slot number of the header naming `key` (the table holds hex keys at offset 16). */
function slotOf(d: string, key: string): number {
  const meta = metaOf(d);
  const table = Buffer.alloc(meta.slots * meta.headerBytes);
  const fd = openSync(join(d, 'blocks.kvt'), 'r');
  try {
    readSync(fd, table, 0, table.length, 0);
  } finally {
    closeSync(fd);
  }
  const raw = Buffer.from(key, 'hex');
  for (let s = 0; s < meta.slots; s++) {
    const h = table.subarray(s * meta.headerBytes);
    if (h.toString('latin1', 0, 8) === 'KVTBLK01' && h.subarray(16, 16 + raw.length).equals(raw)) {
      return s;
    }
  }
  throw new Error(`no header names ${key}`);
}

/** Reads, edits and writes back the stored bytes of `slot`; `fixCrc` rewrites its header's CRCs. */
function editPayload(
  d: string,
  slot: number,
  edit: (payload: Buffer) => void,
  fixCrc: boolean,
): void {
  const meta = metaOf(d);
  const fd = openSync(join(d, 'blocks.kvt'), 'r+');
  try {
    const at = meta.payloadOffset + slot * meta.slotBytes;
    const payload = Buffer.alloc(meta.storedBytes!);
    readSync(fd, payload, 0, payload.length, at);
    edit(payload);
    writeSync(fd, payload, 0, payload.length, at);
    if (!fixCrc) return;
    const header = Buffer.alloc(76);
    readSync(fd, header, 0, 76, slot * meta.headerBytes);
    header.writeUInt32LE(native().crc32c(payload), 56);
    header.writeUInt32LE(native().crc32c(header.subarray(0, 72)), 72);
    writeSync(fd, header, 0, 76, slot * meta.headerBytes);
  } finally {
    closeSync(fd);
  }
}

describe('Warehouse with an encoding file tier', () => {
  for (const dtype of ['fp16', 'bf16'] as const) {
    for (const spec of CODECS) {
      const label = `${spec.codec}${spec.scales ? ` (${spec.scales} scales)` : ''}, ${dtype}`;
      it(`${label}: blocks forced down come back as decode(encode(x)), the host copies as x, before and after a reopen`, async () => {
        const d = dir();
        const n = 8;
        const bs = blockBytesOf(dtype);
        const codec = BlockCodec.open(spec, layoutOf(dtype));
        const keys = keysOf(n, label);
        const x = kvBlocks(n, dtype, 7);
        const lossy = roundTrip(codec, x, n);
        expect(lossy.equals(x)).toBe(false); // the codec is lossy on this data: the test can tell

        const wh = await Warehouse.open(options(d, spec, dtype, 16));
        // One block a put: the host tier (2 blocks) spills the older ones into the file tier.
        for (let i = 0; i < n; i++) {
          const r = await wh.put([keys[i]!], x.subarray(i * bs, (i + 1) * bs));
          expect(r.stored).toBe(1);
        }
        const s = wh.stats();
        expect(s.tiers[0]).toMatchObject({ codec: 'none', storedBlockBytes: bs, usedBlocks: 2 });
        expect(s.tiers[1]!.usedBlocks).toBe(n - 2);
        const defaults =
          spec.codec === 'int8'
            ? { scales: 'kivi' }
            : spec.codec === 'fp8-e4m3'
              ? {}
              : { group: 32 };
        expect(s.tiers[1]!.codec).toEqual({ ...defaults, ...spec });
        expect(s.tiers[1]!.storedBlockBytes).toBe(metaOf(d).storedBytes);
        expect(s.tiers[1]!.storedBlockBytes).toBeLessThan(bs);

        const dst = Buffer.alloc(n * bs);
        const got = await wh.get(keys, dst, { promote: false });
        expect(got.count).toBe(n);
        for (let i = 0; i < n; i++) {
          const want = (got.tiers[i] === 0 ? x : lossy).subarray(i * bs, (i + 1) * bs);
          expect(
            dst.subarray(i * bs, (i + 1) * bs).equals(want),
            `block ${i} from tier ${got.tiers[i]}`,
          ).toBe(true);
        }
        expect(got.tiers.filter((t) => t === 1).length).toBe(n - 2);
        expect(wh.stats().corrupt).toBe(0);
        await wh.close(); // writes the host-only blocks down, encoded

        const again = await Warehouse.open(options(d, spec, dtype, 16));
        try {
          expect(again.stats().tiers[1]!.usedBlocks).toBe(n);
          dst.fill(0);
          const back = await again.get(keys, dst); // promotes into the host tier
          expect(back.count).toBe(n);
          expect(back.tiers.every((t) => t === 1)).toBe(true);
          expect(dst.equals(lossy)).toBe(true);
          // The promoted copies (of decoded blocks) verify against their own checksums.
          const promoted = keys.flatMap((k, i) => (again.lookup([k]).tiers[0] === 0 ? [i] : []));
          expect(promoted.length).toBe(2);
          dst.fill(0);
          const top = await again.get(
            promoted.map((i) => keys[i]!),
            dst.subarray(0, 2 * bs),
            { promote: false },
          );
          expect(top.tiers).toEqual([0, 0]);
          promoted.forEach((b, j) => {
            const want = lossy.subarray(b * bs, (b + 1) * bs);
            expect(dst.subarray(j * bs, (j + 1) * bs).equals(want)).toBe(true);
          });
          expect(again.stats().corrupt).toBe(0);
        } finally {
          await again.close();
        }
      });
    }
  }

  it('holds bytes / encodedBytes blocks, where the lossless tier holds bytes / blockBytes', async () => {
    const dtype = 'bf16';
    const bs = blockBytesOf(dtype);
    const layout = describeKvLayout({
      form: 'separate',
      numLayers: SHAPE.layers,
      numBlocks: 1,
      blockTokens: SHAPE.tokens,
      kvHeads: SHAPE.heads,
      headDim: SHAPE.dim,
      dtype,
      layers: Array.from({ length: SHAPE.layers }, (_, l) => ({
        k: { offset: 2 * l * (bs / SHAPE.layers / 2) },
        v: { offset: (2 * l + 1) * (bs / SHAPE.layers / 2) },
      })),
    });
    expect(layout.blockBytes).toBe(bs);
    const bytes = 40 * bs;
    for (const spec of CODECS) {
      const codec = BlockCodec.open(spec, layout);
      const d = dir();
      const wh = await Warehouse.open({
        blockBytes: bs,
        tiers: [{ kind: 'file', dir: d, bytes, codec: { ...spec, layout } }],
      });
      const capacity = Math.floor(bytes / codec.encodedBytes);
      expect(capacity).toBeGreaterThan(40);
      expect(wh.stats().tiers[0]!.capacityBlocks).toBe(capacity);
      // Every one of them fits: fill the tier, nothing evicted, all read back.
      const keys = keysOf(capacity, `cap-${spec.codec}-${spec.scales}`);
      const x = kvBlocks(capacity, dtype, 3);
      const r = await wh.put(keys, x);
      expect(r.stored).toBe(capacity);
      const s = wh.stats().tiers[0]!;
      expect(s.usedBlocks).toBe(capacity);
      expect(s.evictions).toBe(0);
      const dst = Buffer.alloc(x.length);
      expect((await wh.get(keys, dst)).count).toBe(capacity);
      expect(dst.equals(roundTrip(codec, x, capacity))).toBe(true);
      await wh.close();
      expect(metaOf(d)).toMatchObject({
        version: 2,
        slots: capacity,
        codec: { codec: spec.codec },
      });
    }
    const plainDir = dir();
    const plain = await Warehouse.open({
      blockBytes: bs,
      tiers: [{ kind: 'file', dir: plainDir, bytes }],
    });
    expect(plain.stats().tiers[0]).toMatchObject({
      capacityBlocks: 40,
      codec: 'none',
      storedBlockBytes: bs,
    });
    await plain.close();
    // Lossless directories are written as before: version 1, no codec fields.
    expect(Object.keys(metaOf(plainDir)).sort()).toEqual([
      'blockBytes',
      'format',
      'headerBytes',
      'payloadOffset',
      'slotBytes',
      'slots',
      'version',
    ]);
    expect(metaOf(plainDir).version).toBe(1);
  });

  it('writes through and prefetches through the codec', async () => {
    const dtype = 'fp16';
    const bs = blockBytesOf(dtype);
    const spec: CodecSpec = { codec: 'int8' };
    const codec = BlockCodec.open(spec, layoutOf(dtype));
    const d = dir();
    const keys = keysOf(4, 'through');
    const x = kvBlocks(4, dtype, 11);
    const wh = await Warehouse.open(
      options(d, spec, dtype, 8, { durability: 'sync', tiers: [{ kind: 'host', bytes: 8 * bs }] }),
    );
    await wh.close();
    const durable = await Warehouse.open(options(d, spec, dtype, 8, { durability: 'sync' }));
    try {
      expect((await durable.put(keys, x)).stored).toBe(4);
      expect(durable.stats().tiers[1]!.usedBlocks).toBe(4); // durable copies, encoded
      // The host tier (2 blocks) kept two of them, exactly; every other read decodes.
      const dst = Buffer.alloc(x.length);
      const lossy = roundTrip(codec, x, 4);
      const got = await durable.get(keys, dst, { promote: false });
      expect(got.tiers.filter((t) => t === 0).length).toBe(2);
      got.tiers.forEach((t, i) => {
        const want = (t === 0 ? x : lossy).subarray(i * bs, (i + 1) * bs);
        expect(dst.subarray(i * bs, (i + 1) * bs).equals(want), `block ${i}`).toBe(true);
      });
      // Evict the host copies by filling the host tier, then prefetch them back from the file.
      await durable.put(keysOf(2, 'through-other'), kvBlocks(2, dtype, 12));
      expect(durable.lookup(keys).tiers).toEqual([1, 1, 1, 1]);
      const moved = await durable.prefetch(keys.slice(0, 2), { to: 0 });
      expect(moved.moved).toBe(2);
      dst.fill(0);
      const back = await durable.get(keys.slice(0, 2), dst.subarray(0, 2 * bs), { promote: false });
      expect(back.tiers).toEqual([0, 0]);
      expect(dst.subarray(0, 2 * bs).equals(lossy.subarray(0, 2 * bs))).toBe(true);
      expect(durable.stats().corrupt).toBe(0);
    } finally {
      await durable.close();
    }
  });

  it('a flipped stored byte is a miss counted corrupt; so is a block whose codec header was changed', async () => {
    const dtype = 'bf16';
    const bs = blockBytesOf(dtype);
    const spec: CodecSpec = { codec: 'fp8-e4m3' };
    const d = dir();
    const keys = keysOf(3, 'damage');
    const fileOnly = () =>
      Warehouse.open({
        blockBytes: bs,
        tiers: [
          {
            kind: 'file',
            dir: d,
            bytes: 4 * bs,
            codec: { ...spec, layout: layoutOf(dtype) },
          },
        ],
      });
    const wh = await fileOnly();
    expect((await wh.put(keys, kvBlocks(3, dtype, 5))).stored).toBe(3);
    await wh.close();
    // Block 0: one payload byte flipped, the header left as it was: the CRC-32C fails.
    editPayload(d, slotOf(d, keys[0]!), (p) => void (p[100] = p[100]! ^ 0x10), false);
    // Block 1: its encoded header names another codec (int8), and the slot's CRC-32C is rewritten
    // to match: only the decoder's header check stands between it and a wrong block.
    editPayload(d, slotOf(d, keys[1]!), (p) => void (p[5] = 2), true);
    const again = await fileOnly();
    try {
      const dst = Buffer.alloc(3 * bs);
      const got = await again.get(keys, dst);
      expect(got.found).toEqual([false, false, true]);
      expect(dst.subarray(0, 2 * bs).every((b) => b === 0)).toBe(true); // nothing written
      const s = again.stats();
      expect(s.corrupt).toBe(2);
      expect(s.tiers[0]!.corrupt).toBe(2);
      expect(again.lookup(keys).tiers).toEqual([-1, -1, 0]);
    } finally {
      await again.close();
    }
  });

  it('refuses a directory written with another codec, or none, or one this build does not know', async () => {
    const dtype = 'fp16';
    const bs = blockBytesOf(dtype);
    const layout = layoutOf(dtype);
    const open = (d: string, codec?: FileTierCodecOptions, bytes = 8 * bs) =>
      Warehouse.open({
        blockBytes: bs,
        tiers: [{ kind: 'file', dir: d, bytes, ...(codec ? { codec } : {}) }],
      });
    const d = dir();
    const keys = keysOf(2, 'mismatch');
    const x = kvBlocks(2, dtype, 9);
    const wh = await open(d, { codec: 'int8', layout }, 4 * bs);
    await wh.put(keys, x);
    await wh.close();
    const before = readFileSync(join(d, 'kvtier.meta.json'), 'utf8');
    await rejectsWith(
      open(d, { codec: 'fp8-e4m3', layout }, 4 * bs),
      'KVTIER_BAD_ARGUMENT',
      /'int8'.*'fp8-e4m3'/,
    );
    await rejectsWith(
      open(d, { codec: 'int8', scales: 'token', layout }, 4 * bs),
      'KVTIER_BAD_ARGUMENT',
      /scales kivi.*scales token/,
    );
    await rejectsWith(open(d, undefined, 4 * bs), 'KVTIER_BAD_ARGUMENT', /'int8'.*'none'/);
    const edited = JSON.parse(before) as Meta;
    edited.codec!.codec = 'zstd-kv';
    writeFileSync(join(d, 'kvtier.meta.json'), JSON.stringify(edited));
    await rejectsWith(
      open(d, { codec: 'int8', layout }, 4 * bs),
      'KVTIER_BAD_ARGUMENT',
      /zstd-kv.*does not know.*'int8'/,
    );
    const shrunk = JSON.parse(before) as Meta;
    shrunk.storedBytes = shrunk.storedBytes! - 512;
    writeFileSync(join(d, 'kvtier.meta.json'), JSON.stringify(shrunk));
    await rejectsWith(
      open(d, { codec: 'int8', layout }, 4 * bs),
      'KVTIER_BAD_ARGUMENT',
      /stored bytes per block/,
    );
    writeFileSync(join(d, 'kvtier.meta.json'), before);
    // Still the same blocks with the codec it was written with.
    const back = await open(d, { codec: 'int8', layout }, 4 * bs);
    const dst = Buffer.alloc(2 * bs);
    expect((await back.get(keys, dst)).count).toBe(2);
    expect(dst.equals(roundTrip(BlockCodec.open({ codec: 'int8' }, layout), x, 2))).toBe(true);
    await back.close();
    // A lossless directory is not read through a codec either.
    const plain = dir();
    await (await open(plain)).close();
    await rejectsWith(
      open(plain, { codec: 'kivi2', layout }, 8 * bs),
      'KVTIER_BAD_ARGUMENT',
      /'none'.*'kivi2'/,
    );
  });

  it('refuses a codec that does not fit, and a codec outside the file tier, at open', async () => {
    const bs = blockBytesOf('fp16');
    const layout = layoutOf('fp16');
    const d = dir();
    const open = (tiers: WarehouseOptions['tiers'], blockBytes = bs) =>
      Warehouse.open({ blockBytes, tiers });
    const file = (codec: unknown) =>
      ({ kind: 'file', dir: d, bytes: 8 * bs, codec }) as WarehouseOptions['tiers'][number];
    await rejectsWith(
      open([file({ codec: 'int8', layout })], bs * 2),
      'KVTIER_BAD_ARGUMENT',
      /blocks of 16384 bytes.*blockBytes is 32768/,
    );
    await rejectsWith(
      open([file({ codec: 'kivi2', group: 48, layout })]),
      'KVTIER_BAD_ARGUMENT',
      /group size 48 does not divide/,
    );
    await rejectsWith(
      open([file({ codec: 'int8', layout: { ...layout, dtype: 'fp8' } })]),
      'KVTIER_BAD_ARGUMENT',
      /cannot encode dtype/,
    );
    await rejectsWith(
      open([file({ codec: 'zstd', layout })]),
      'KVTIER_BAD_ARGUMENT',
      /codec must be one of/,
    );
    await rejectsWith(open([file({ codec: 'int8' })]), 'KVTIER_BAD_ARGUMENT', /layout/);
    await rejectsWith(
      open([{ kind: 'host', bytes: 4 * bs, codec: { codec: 'int8', layout } } as never]),
      'KVTIER_BAD_ARGUMENT',
      /only a file tier stores blocks encoded/,
    );
    // Nothing was left behind by the refused opens: the directory opens lossless afterwards.
    const wh = await open([{ kind: 'file', dir: d, bytes: 8 * bs }]);
    expect(wh.stats().tiers[0]!.codec).toBe('none');
    await wh.close();
  });
});

describe('blocks the codec refuses', () => {
  it('a NaN block is kept where it was put, and dropped (not moved down) when it must make room', async () => {
    const dtype = 'fp16';
    const bs = blockBytesOf(dtype);
    const d = dir();
    const wh = await Warehouse.open(
      options(d, { codec: 'fp8-e4m3' }, dtype, 16, { policy: 'lru' }),
    );
    try {
      const keys = keysOf(6, 'nan');
      const x = kvBlocks(6, dtype, 21);
      x.writeUInt16LE(0x7e00, 10); // a NaN in block 0
      const put = async (i: number) =>
        (await wh.put([keys[i]!], x.subarray(i * bs, (i + 1) * bs))).status[0];
      expect(await put(0)).toBe('stored');
      const dst = Buffer.alloc(bs);
      expect((await wh.get([keys[0]!], dst, { promote: false })).tiers).toEqual([0]);
      expect(dst.equals(x.subarray(0, bs))).toBe(true); // in memory, exactly as put
      expect(await put(1)).toBe('stored');
      // Block 0 is the victim: the codec refuses it, so this put fails once and block 0 goes.
      expect(await put(2)).toBe('io-error');
      expect(wh.lookup([keys[0]!]).tiers).toEqual([-1]);
      // The room is there now: the next puts succeed, demoting block 1 encoded.
      for (const i of [2, 3, 4, 5]) expect(await put(i)).toBe('stored');
      expect(wh.lookup(keys).tiers).toEqual([-1, 1, 1, 1, 0, 0]);
      expect(wh.stats().corrupt).toBe(0);
    } finally {
      await wh.close();
    }
  });

  it('under durability sync, a block the codec refuses is not stored', async () => {
    const dtype = 'bf16';
    const bs = blockBytesOf(dtype);
    const wh = await Warehouse.open(
      options(dir(), { codec: 'kivi2' }, dtype, 8, { durability: 'sync' }),
    );
    const keys = keysOf(2, 'nan-sync');
    const x = kvBlocks(2, dtype, 22);
    x.writeUInt16LE(0x7f80, bs + 64); // +infinity in block 1
    const r = await wh.put(keys, x);
    expect(r.status).toEqual(['stored', 'io-error']);
    expect(wh.stats().tiers[1]!.usedBlocks).toBe(1);
    // Its host copy stays until close, which cannot write it down either, and says so.
    await rejectsWith(
      wh.close(),
      'KVTIER_BAD_ARGUMENT',
      new RegExp(`lost: ${keys[1]}.*not finite`),
    );
  });
});
