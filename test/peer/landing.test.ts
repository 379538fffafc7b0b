/**
 * One-step puts that land in the store: the server claims free host-tier slots ahead of time and
 * the transport reads PUT blocks straight into them. In one process, over real sockets and a real
 * Warehouse: bytes and checksums come back intact, statuses are right for repeated and present
 * keys, a connection cut mid-payload gives its slots back, and the host tier's counts reconcile
 * once the landing slots go back.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  chainKeys,
  connect,
  PeerServer,
  Region,
  Warehouse,
  type PeerClient,
} from '../../lib/index.js';
import { native } from '../../lib/core/native.js';
import { randomBytes, tempDir, until } from '../helpers.js';
import { keysMeta, rawFrame, RawPeer } from './raw.js';

const BS = 64 * 1024;
const HOST_BLOCKS = 256; // landing claims an eighth: 32 slots
const secret = 'landing-test-secret-0123456789ab';
const IDLE_MS = 200;
const dir = tempDir('kvtier-landing-');
let wh: Warehouse;
let server: PeerServer;
let client: PeerClient;

beforeAll(async () => {
  wh = await Warehouse.open({
    blockBytes: BS,
    tiers: [
      { kind: 'host', bytes: HOST_BLOCKS * BS },
      { kind: 'file', dir: dir.path, bytes: 4096 * BS },
    ],
  });
  server = PeerServer.start({
    host: '127.0.0.1',
    port: 0,
    warehouse: wh,
    secret: Buffer.from(secret),
    landingIdleMs: IDLE_MS,
  });
  client = await connect(`127.0.0.1:${server.port}`, { token: secret });
});

afterAll(async () => {
  await client.close();
  await server.close();
  await wh.close();
  dir.remove();
});

const keysFor = (n: number, seed: number): string[] =>
  chainKeys(
    new Uint32Array(n * 4).map((_, i) => i + seed * 1009),
    {
      blockTokens: 4,
      namespace: 'landing',
    },
  ).keys();

const host = (): { used: number; capacity: number } => {
  const t = wh.stats().tiers[0]!;
  return { used: t.usedBlocks, capacity: t.capacityBlocks };
};

/** Blocks the host tier holds (as opposed to slots claimed for landing). */
const storedInHost = (): number => wh.keys().filter((k) => wh.lookup([k]).tiers[0] === 0).length;

/** Waits until the idle landing slots have gone back: the host tier holds only blocks. */
const idle = (): Promise<void> =>
  until('landing slots to go back to the host tier', () => host().used === storedInHost());

/** Waits until landing slots are claimed: at least `n` beyond the blocks the host tier holds. */
const claimed = (n: number): Promise<void> =>
  until(`${n} landing slots to be claimed`, () => host().used - storedInHost() >= n);

describe('one-step puts that land in the store', () => {
  it('lands blocks put many at a time, and every byte and checksum comes back', async () => {
    const n = 96;
    const keys = keysFor(n, 1);
    const src = randomBytes(n * BS);
    // Eight callers at a time, one block each, as an engine's workers would put.
    let next = 0;
    const statuses: string[] = new Array<string>(n);
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < n) {
          const i = next++;
          const r = await client.put([keys[i]!], src.subarray(i * BS, (i + 1) * BS));
          statuses[i] = r.status[0]!;
        }
      }),
    );
    expect(statuses.every((s) => s === 'stored')).toBe(true);
    // The first puts arrive before any slot is claimed; the rest land.
    expect(server.putBlocks.landed).toBeGreaterThan(n / 2);
    expect(server.putBlocks.placed).toBe(0);

    const dst = Buffer.alloc(n * BS);
    expect((await client.get(keys, dst)).count).toBe(n);
    expect(dst.equals(src)).toBe(true);
    // The server's own get checks each block against the checksum it was stored with: the one
    // the transport computed as the bytes landed.
    const local = Region.allocate(n * BS);
    try {
      expect((await wh.get(keys, local)).count).toBe(n);
      expect(Buffer.from(local.buffer).equals(src)).toBe(true);
    } finally {
      await local.close();
    }
    expect(wh.stats().corrupt).toBe(0);
    expect(client.corrupt).toBe(0);
  });

  it('answers present for keys already stored or repeated, and stores each key once', async () => {
    const keys = keysFor(8, 2);
    const src = randomBytes(8 * BS);
    expect((await client.put(keys.slice(0, 4), src)).stored).toBe(4);
    const landedBefore = server.putBlocks.landed;
    // Keys 0-3 are there already; key 5 comes twice, with different bytes the second time.
    const batch = [...keys, keys[5]!];
    const bytes = Buffer.concat([src, randomBytes(BS)]);
    const r = await client.put(batch, bytes);
    expect(server.putBlocks.landed).toBe(landedBefore + batch.length);
    expect(r.status.slice(0, 4)).toEqual(['present', 'present', 'present', 'present']);
    expect(r.status.slice(4, 8)).toEqual(['stored', 'stored', 'stored', 'stored']);
    expect(r.status[8]).toBe('stored'); // the same key as entry 5, which this put stored
    const dst = Buffer.alloc(8 * BS);
    expect((await client.get(keys, dst)).count).toBe(8);
    expect(dst.equals(src)).toBe(true); // the first copy of key 5 won
  });

  it('gives landing slots back when puts stop: the host tier holds only blocks', async () => {
    expect(host().used).toBeGreaterThan(storedInHost()); // slots are claimed after the puts above
    await idle();
    const stored = storedInHost();
    expect(host().used).toBe(stored);
    // And claims them again for the next puts.
    const keys = keysFor(8, 3);
    await client.put(keys, randomBytes(8 * BS));
    await client.put(keysFor(8, 4), randomBytes(8 * BS));
    expect(host().used).toBeGreaterThan(stored + 16);
  });

  it('a connection cut in the middle of a landing payload gives its slots back', async () => {
    const raw = await RawPeer.open(server.port);
    const hs = await raw.handshake(secret);
    expect(hs).toMatchObject({ blockBytes: BS });
    // Slots are claimed once a put arrives; then a PUT whose payload stops halfway.
    const warm = keysFor(2, 5);
    raw.send(rawFrame(0x10, 1, keysMeta(warm), randomBytes(2 * BS)));
    expect((await raw.next())?.type).toBe(0x11);
    await claimed(4);
    const before = server.netStats();
    const cut = keysFor(4, 6);
    const frame = rawFrame(0x10, 2, keysMeta(cut), randomBytes(4 * BS));
    raw.send(frame.subarray(0, frame.length - 2 * BS - 100));
    // The payload is landing: its four blocks were given four landing slots before the cut.
    await until(
      'the cut payload to land',
      () => server.netStats().landingTaken === before.landingTaken + 4,
    );
    raw.close();
    await raw.ended;
    await until(
      'the cut payload to give its slots back',
      () => server.netStats().landingReturned === before.landingReturned + 4,
    );
    expect(wh.lookup(cut).tiers).toEqual([-1, -1, -1, -1]);
    await idle();
    const stored = storedInHost();
    expect(host().used).toBe(stored);
    // The server goes on landing puts for others.
    const after = keysFor(8, 7);
    const src = randomBytes(8 * BS);
    const landedBefore = server.putBlocks.landed;
    await client.put(after, src);
    await client.put(keysFor(8, 8), randomBytes(8 * BS));
    expect(server.putBlocks.landed).toBeGreaterThan(landedBefore);
    const dst = Buffer.alloc(8 * BS);
    expect((await client.get(after, dst)).count).toBe(8);
    expect(dst.equals(src)).toBe(true);
  });
});

describe('landing and refused frames', () => {
  it('a refused PUT gives back the slots it landed in, and GET payloads never land', async () => {
    await client.put(keysFor(4, 20), randomBytes(4 * BS));
    await claimed(2);
    const before = server.netStats();
    const raw = await RawPeer.open(server.port);
    expect(await raw.handshake(secret)).toMatchObject({ blockBytes: BS });
    // Metadata for 3 keys, a payload of 2 blocks: it lands (2 whole blocks), then is refused.
    const keys = keysFor(3, 21);
    raw.send(rawFrame(0x10, 1, keysMeta(keys), randomBytes(2 * BS)));
    expect((await raw.next())?.type).toBe(0x05);
    await raw.ended;
    // It did land (two slots, whole frame), so refusing it had slots to give back.
    expect(server.netStats().landingTaken).toBe(before.landingTaken + 2);
    const raw2 = await RawPeer.open(server.port);
    expect(await raw2.handshake(secret)).toMatchObject({ blockBytes: BS });
    raw2.send(rawFrame(0x12, 1, keysMeta(keys.slice(0, 2)), randomBytes(2 * BS)));
    expect((await raw2.next())?.type).toBe(0x05);
    await raw2.ended;
    expect(wh.lookup(keys).tiers).toEqual([-1, -1, -1]);
    // GET payloads never land.
    expect(server.netStats().landingTaken).toBe(before.landingTaken + 2);
    await idle();
    const stored = storedInHost();
    expect(host().used).toBe(stored);
    const landedBefore = server.putBlocks.landed;
    const after = keysFor(8, 22);
    const src = randomBytes(8 * BS);
    await client.put(after, src);
    await client.put(keysFor(8, 23), randomBytes(8 * BS));
    expect(server.putBlocks.landed).toBeGreaterThan(landedBefore);
    const dst = Buffer.alloc(8 * BS);
    expect((await client.get(after, dst)).count).toBe(8);
    expect(dst.equals(src)).toBe(true);
  });
});

describe('Warehouse.claim and land', () => {
  it('makes room as a put does, and victims stay readable below', async () => {
    const d = tempDir('kvtier-claim-');
    const w = await Warehouse.open({
      blockBytes: 4096,
      tiers: [
        { kind: 'host', bytes: 8 * 4096 },
        { kind: 'file', dir: d.path, bytes: 64 * 4096 },
      ],
    });
    const changes: { added: string[]; removed: string[] }[] = [];
    w.watch((added, removed) => changes.push({ added: [...added], removed: [...removed] }));
    try {
      const keys = keysFor(8, 9);
      const src = randomBytes(8 * 4096);
      await w.put(keys, src);
      const slots = await w.hostSlots.claim(3);
      expect(slots).toHaveLength(3);
      expect(w.stats().tiers[0]!.usedBlocks).toBe(8); // 5 blocks and 3 claimed slots
      expect(w.lookup(keys).tiers.filter((t) => t === 1)).toHaveLength(3); // demoted, not lost
      const fresh = keysFor(3, 10);
      const bytes = randomBytes(3 * 4096);
      slots.forEach((s, i) => {
        (s.target as Region).view(s.offset, 4096).set(bytes.subarray(i * 4096, (i + 1) * 4096));
      });
      const checksums = fresh.map((_, i) =>
        native().crc32c(bytes.subarray(i * 4096, (i + 1) * 4096)),
      );
      // fresh[0] twice and keys[0] (already stored) are not stored again.
      const stored = await w.hostSlots.land([fresh[0]!, fresh[1]!, fresh[0]!], slots, [
        checksums[0]!,
        checksums[1]!,
        checksums[2]!,
      ]);
      expect(stored).toEqual([true, true, false]);
      w.hostSlots.giveBack([slots[2]!]);
      expect(w.stats().tiers[0]!.usedBlocks).toBe(7);
      const got = Buffer.alloc(2 * 4096);
      expect((await w.get(fresh.slice(0, 2), got)).count).toBe(2);
      expect(got.equals(bytes.subarray(0, 2 * 4096))).toBe(true);
      const all = Buffer.alloc(8 * 4096);
      expect((await w.get(keys, all)).count).toBe(8);
      expect(all.equals(src)).toBe(true);
      expect(changes.some((c) => c.added.includes(fresh[1]!))).toBe(true);
      await expect(w.hostSlots.land([fresh[2]!], slots, [])).rejects.toMatchObject({
        code: 'KVTIER_BAD_ARGUMENT',
      });
    } finally {
      await w.close();
      d.remove();
    }
  });

  it('claims nothing where bytes cannot be taken in place', async () => {
    const d = tempDir('kvtier-claim-sync-');
    const w = await Warehouse.open({
      blockBytes: 4096,
      durability: 'sync',
      tiers: [
        { kind: 'host', bytes: 8 * 4096 },
        { kind: 'file', dir: d.path, bytes: 64 * 4096 },
      ],
    });
    try {
      expect(await w.hostSlots.claim(2)).toEqual([]);
      expect(w.hostSlots.inPlace()).toBe(false);
    } finally {
      await w.close();
      d.remove();
    }
  });
});

/** A server that pauses a connection past two queued blocks, and a raw client connected to it. */
async function queueingServer(
  hostBlocks: number,
): Promise<{ w: Warehouse; s: PeerServer; raw: RawPeer }> {
  const w = await Warehouse.open({
    blockBytes: BS,
    tiers: [{ kind: 'host', bytes: hostBlocks * BS }],
  });
  const s = PeerServer.start({
    host: '127.0.0.1',
    port: 0,
    warehouse: w,
    secret: Buffer.from(secret),
    maxQueuedBytes: 2 * BS,
  });
  const raw = await RawPeer.open(s.port);
  expect(await raw.handshake(secret)).toMatchObject({ blockBytes: BS });
  return { w, s, raw };
}

describe('backpressure', () => {
  it('stops reading a connection whose requests pile up, and serves them all once they drain', async () => {
    const { w, s, raw } = await queueingServer(1024);
    let gate: Awaited<ReturnType<Warehouse['hostSlots']['reserve']>>;
    try {
      // 320 puts of two blocks (40 MiB) whose keys a reservation holds: none can finish until it
      // ends, so without backpressure every byte would queue in the server.
      const frames = 320;
      const keys = keysFor(frames * 2, 11);
      gate = await w.hostSlots.reserve(keys);
      expect(gate).toBeDefined();
      const src = randomBytes(frames * 2 * BS);
      for (let f = 0; f < frames; f++) {
        const k = keys.slice(2 * f, 2 * f + 2);
        raw.send(rawFrame(0x10, f + 1, keysMeta(k), src.subarray(2 * f * BS, (2 * f + 2) * BS)));
      }
      await until('the server to stop reading', () => s.backpressure.pauses >= 1);
      // The transport stops reading right after the frame that crossed the limit: at most the
      // limit and one frame (its payload and metadata) were ever held, not 40 MiB.
      expect(s.backpressure.maxQueued).toBeLessThanOrEqual(2 * BS + (2 * BS + 8 + 2 * 40));
      gate!.abort();
      const answers = new Map<number, number[]>();
      while (answers.size < frames) {
        const a = await raw.next();
        expect(a?.type).toBe(0x11);
        answers.set(a!.requestId, [a!.meta[8]!, a!.meta[16]!]);
      }
      expect([...answers.values()].flat().every((st) => st === 0)).toBe(true);
      const got = Buffer.alloc(frames * 2 * BS);
      expect((await w.get(keys, got)).count).toBe(frames * 2);
      expect(got.equals(src)).toBe(true);
      expect(s.backpressure.pauses).toBeGreaterThanOrEqual(1);
    } finally {
      gate?.abort();
      raw.close();
      await s.close();
      await w.close();
    }
  });

  it('a paused connection whose client hangs up is closed', async () => {
    const { w, s, raw } = await queueingServer(256);
    let gate: Awaited<ReturnType<Warehouse['hostSlots']['reserve']>>;
    try {
      const keys = keysFor(16, 30);
      gate = await w.hostSlots.reserve(keys);
      for (let f = 0; f < 8; f++) {
        raw.send(
          rawFrame(0x10, f + 1, keysMeta(keys.slice(2 * f, 2 * f + 2)), randomBytes(2 * BS)),
        );
      }
      await until('the server to stop reading', () => s.backpressure.pauses > 0);
      expect(s.connections).toBe(1);
      raw.socket.resetAndDestroy();
      // Seen although nothing reads the connection while its requests wait on the gate.
      await until('the server to see the hang-up', () => s.connections === 0);
      gate!.abort();
      gate = undefined;
      // The waiting puts still finish (their bytes arrived whole) and the server goes on serving.
      const c2 = await connect(`127.0.0.1:${s.port}`, { token: secret });
      const more = keysFor(2, 31);
      const src = randomBytes(2 * BS);
      expect((await c2.put(more, src)).stored).toBe(2);
      const dst = Buffer.alloc(2 * BS);
      expect((await c2.get(more, dst)).count).toBe(2);
      expect(dst.equals(src)).toBe(true);
      await c2.close();
    } finally {
      gate?.abort();
      raw.close();
      await s.close();
      await w.close();
    }
  });
});
