/**
 * Durable puts (RequestFlag.DURABLE): in one process, over real sockets and a real Warehouse, a
 * durable put answers only once its blocks have a copy in the file tier, whichever way they
 * reached the store (landed in host slots, placed by an offer); a plain put does not wait for
 * one. A server without a file tier does not announce durable puts, and refuses the flag without
 * storing anything. That the copies survive a SIGKILL is test/fault/durable-serve.test.ts's part.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  chainKeys,
  connect,
  isKvtierError,
  PeerServer,
  Warehouse,
  type PeerClient,
} from '../../lib/index.js';
import { randomBytes, tempDir, until } from '../helpers.js';
import { keysMeta, rawFrame, RawPeer, type RawFrame } from './raw.js';

const BS = 16 * 1024;
const HOST_BLOCKS = 256; // landing claims an eighth: 32 slots
const secret = 'durable-test-secret-0123456789abc';
const dir = tempDir('kvtier-durable-');
let wh: Warehouse;
let server: PeerServer;
let client: PeerClient;
let memOnly: Warehouse;
let memServer: PeerServer;

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
  });
  client = await connect(`127.0.0.1:${server.port}`, { token: secret });
  memOnly = await Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: 64 * BS }] });
  memServer = PeerServer.start({
    host: '127.0.0.1',
    port: 0,
    warehouse: memOnly,
    secret: Buffer.from(secret),
  });
});

afterAll(async () => {
  await client.close();
  await server.close();
  await memServer.close();
  await wh.close();
  await memOnly.close();
  dir.remove();
});

let seed = 0;
const keysFor = (n: number): string[] =>
  chainKeys(
    new Uint32Array(n * 4).map((_, i) => i + ++seed * 1009),
    {
      blockTokens: 4,
      namespace: 'durable',
    },
  ).keys();

/** Blocks in the file tier (the host tier is large enough that nothing is evicted to it). */
const inFile = (): number => wh.stats().tiers[1]!.usedBlocks;

const statusesOf = (f: RawFrame): number[] =>
  Array.from({ length: f.meta.readUInt32LE(0) }, (_, i) => f.meta.readUInt8(8 + 8 * i));

async function readBack(c: PeerClient, keys: string[], src: Buffer): Promise<void> {
  const dst = Buffer.alloc(keys.length * BS);
  expect((await c.get(keys, dst)).count).toBe(keys.length);
  expect(dst.equals(src)).toBe(true);
}

describe('durable puts', () => {
  it('a plain put answers from the host tier; a durable one once the file tier has a copy', async () => {
    const plain = keysFor(4);
    const plainSrc = randomBytes(4 * BS);
    const before = inFile();
    expect((await client.put(plain, plainSrc)).stored).toBe(4);
    expect(inFile()).toBe(before);
    const keys = keysFor(4);
    const src = randomBytes(4 * BS);
    expect((await client.put(keys, src, { durable: true })).stored).toBe(4);
    expect(inFile()).toBe(before + 4);
    await readBack(client, keys, src);
    // A key already stored, in the host tier only: a durable put of it answers present only
    // once it has its file copy too.
    expect((await client.put(plain, plainSrc, { durable: true })).present).toBe(4);
    expect(inFile()).toBe(before + 8);
  });

  it('blocks that landed straight in host-tier slots get their file copy before the answer', async () => {
    const landed = server.putBlocks.landed;
    // Landing slots are claimed once puts arrive: put until a durable put has landed.
    await until('a durable put lands', async () => {
      const keys = keysFor(2);
      const src = randomBytes(2 * BS);
      const before = inFile();
      expect((await client.put(keys, src, { durable: true })).stored).toBe(2);
      expect(inFile()).toBe(before + 2);
      await readBack(client, keys, src);
      return server.putBlocks.landed > landed;
    });
  });

  it('connect({ durable: true }) makes every put durable unless the put says otherwise', async () => {
    const c = await connect(`127.0.0.1:${server.port}`, { token: secret, durable: true });
    try {
      const keys = keysFor(3);
      const src = randomBytes(3 * BS);
      const before = inFile();
      expect((await c.put(keys, src)).stored).toBe(3);
      expect(inFile()).toBe(before + 3);
      expect((await c.put(keysFor(3), randomBytes(3 * BS), { durable: false })).stored).toBe(3);
      expect(inFile()).toBe(before + 3);
      await readBack(c, keys, src);
    } finally {
      await c.close();
    }
  });

  it('a two-step put whose offer carries DURABLE: placed in reserved slots, answered once copied down', async () => {
    const peer = await RawPeer.open(server.port);
    await peer.handshake(secret);
    const keys = keysFor(3);
    const blocks = randomBytes(3 * BS);
    const before = inFile();
    peer.send(rawFrame(0x18, 5, keysMeta(keys), undefined, 0, 0x08));
    const accept = await peer.next();
    expect(accept).toMatchObject({ type: 0x19, requestId: 5 });
    expect(statusesOf(accept!)).toEqual([0, 0, 0]);
    const placed = server.putBlocks.placed;
    peer.send(rawFrame(0x1a, 5, Buffer.from(accept!.meta), blocks));
    const result = await peer.next();
    expect(result).toMatchObject({ type: 0x11, requestId: 5 });
    expect(statusesOf(result!)).toEqual([0, 0, 0]);
    expect(server.putBlocks.placed).toBe(placed + 3);
    expect(inFile()).toBe(before + 3);
    peer.send(rawFrame(0x12, 6, keysMeta(keys)));
    const got = await peer.next();
    expect(got!.payload.equals(blocks)).toBe(true);
    peer.close();
  });

  it('a server without a file tier announces no durable puts and refuses the flag, storing nothing', async () => {
    const c = await connect(`127.0.0.1:${memServer.port}`, { token: secret });
    try {
      const keys = keysFor(2);
      const err = await c
        .put(keys, randomBytes(2 * BS), { durable: true })
        .catch((e: unknown) => e);
      expect(isKvtierError(err, 'KVTIER_NOT_AVAILABLE'), String(err)).toBe(true);
      const bad = await c
        .put(keys, randomBytes(2 * BS), { durable: 1 as never })
        .catch((e: unknown) => e);
      expect(isKvtierError(bad, 'KVTIER_BAD_ARGUMENT'), String(bad)).toBe(true);
      expect((await c.lookup(keys)).present).toEqual([false, false]);
    } finally {
      await c.close();
    }
    // A client that sends the flag anyway gets ERROR (INTERNAL) for that request only.
    const peer = await RawPeer.open(memServer.port);
    await peer.handshake(secret);
    const keys = keysFor(1);
    peer.send(rawFrame(0x10, 3, keysMeta(keys), randomBytes(BS), BS, 0x08));
    const refused = await peer.next();
    expect(refused).toMatchObject({ type: 0x05, requestId: 3 });
    expect(refused!.meta.readUInt32LE(0)).toBe(6);
    peer.send(rawFrame(0x14, 4, keysMeta(keys)));
    const look = await peer.next();
    expect(look).toMatchObject({ type: 0x15, requestId: 4 });
    expect(statusesOf(look!)).toEqual([1]);
    peer.close();
  });
});
