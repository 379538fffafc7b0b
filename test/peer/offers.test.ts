/**
 * The limit of 64 put offers waiting for their data, per connection, holds for offers that arrive
 * together: each is counted the moment it arrives, not once its slots are reserved. The offers
 * over the limit are refused one by one (ERROR LIMIT with their request id) and the accepted ones
 * complete on the same connection.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { chainKeys, PeerServer, Warehouse } from '../../lib/index.js';
import { randomBytes } from '../helpers.js';
import { keysMeta, rawFrame, RawPeer, type RawFrame } from './raw.js';

const BS = 4096;
const secret = 'offers-test-secret-0123456789abcd';
const OFFERS = 100;
const LIMIT = 64; // docs/protocol.md, "Two-step puts"
let wh: Warehouse;
let server: PeerServer;

beforeAll(async () => {
  // Room for every offer at once: a refusal below can only be the limit, never a full tier.
  wh = await Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: 1024 * BS }] });
  server = PeerServer.start({
    host: '127.0.0.1',
    port: 0,
    warehouse: wh,
    secret: Buffer.from(secret),
  });
});

afterAll(async () => {
  await server.close();
  await wh.close();
});

const keysFor = (n: number, seed: number): string[] =>
  chainKeys(
    new Uint32Array(n * 4).map((_, i) => i + seed * 1009),
    {
      blockTokens: 4,
      namespace: 'offers',
    },
  ).keys();

const statusesOf = (f: RawFrame): number[] =>
  Array.from({ length: f.meta.readUInt32LE(0) }, (_, i) => f.meta.readUInt8(8 + 8 * i));

describe('the limit of offers waiting for their data', () => {
  it('100 offers back to back: exactly 64 accepted, the rest refused with LIMIT, the accepted complete', async () => {
    const peer = await RawPeer.open(server.port);
    expect(await peer.handshake(secret)).toMatchObject({ blockBytes: BS });
    const keys = keysFor(OFFERS, 1);
    const blocks = randomBytes(OFFERS * BS);
    // One write: every offer is in the server's hands before it has reserved anything.
    peer.send(Buffer.concat(keys.map((k, i) => rawFrame(0x18, i + 1, keysMeta([k])))));
    const answers = new Map<number, RawFrame>();
    while (answers.size < OFFERS) {
      const f = await peer.next();
      expect(f, 'the connection stays open').toBeDefined();
      expect(answers.has(f!.requestId)).toBe(false);
      answers.set(f!.requestId, f!);
    }
    const accepted = [...answers.values()].filter((f) => f.type === 0x19);
    const refused = [...answers.values()].filter((f) => f.type === 0x05);
    expect(accepted.length).toBe(LIMIT);
    expect(refused.length).toBe(OFFERS - LIMIT);
    // Counted in arrival order: the first 64 are the accepted ones.
    expect(accepted.map((f) => f.requestId).sort((a, b) => a - b)).toEqual(
      Array.from({ length: LIMIT }, (_, i) => i + 1),
    );
    for (const f of refused) expect(f.meta.readUInt32LE(0)).toBe(4); // LIMIT
    for (const f of accepted) expect(statusesOf(f)).toEqual([0]);

    // The accepted offers complete on the same connection: data, then PUT_RESULT stored.
    peer.send(
      Buffer.concat(
        accepted.map((f) => {
          const i = f.requestId - 1;
          return rawFrame(
            0x1a,
            f.requestId,
            Buffer.from(f.meta),
            blocks.subarray(i * BS, (i + 1) * BS),
          );
        }),
      ),
    );
    const results = new Map<number, RawFrame>();
    while (results.size < LIMIT) {
      const f = await peer.next();
      expect(f).toMatchObject({ type: 0x11 });
      results.set(f!.requestId, f!);
    }
    for (const f of results.values()) expect(statusesOf(f)).toEqual([0]);

    // Bytes verified: the accepted blocks come back whole; the refused offers stored nothing.
    peer.send(rawFrame(0x12, 1000, keysMeta(keys)));
    const got = await peer.next();
    expect(got).toMatchObject({ type: 0x13, requestId: 1000 });
    const statuses = statusesOf(got!);
    expect(statuses.slice(0, LIMIT)).toEqual(new Array(LIMIT).fill(0));
    expect(statuses.slice(LIMIT)).toEqual(new Array(OFFERS - LIMIT).fill(1));
    expect(got!.payload.equals(blocks.subarray(0, LIMIT * BS))).toBe(true);

    // With the accepted offers done, the connection may offer again.
    const more = keysFor(1, 2);
    peer.send(rawFrame(0x18, 2000, keysMeta(more)));
    const again = await peer.next();
    expect(again).toMatchObject({ type: 0x19, requestId: 2000 });
    expect(statusesOf(again!)).toEqual([0]);
    peer.close();
  });
});
