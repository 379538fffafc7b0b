/**
 * The request id a peer server makes up for a frame whose call names none is one no client can
 * send: without tenants, a client naming its own request `\u0001peer-frame-1` must not join
 * another connection's request (the policy would count the two as one).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';

import { chainKeys, PeerServer, Warehouse, type AccessInfo } from '../../lib/index.js';
import { encodeCall } from '../../lib/peer/call-codec.js';
import { keysMeta, rawFrame, RawPeer } from './raw.js';
import { recordingPolicy, type Heard } from './recording-policy.js';

const BS = 4096;
const secret = 'request-ids-secret-0123456789abcd';
/** Every insert and touch the host tier's policy heard, with its key. */
const heard: Heard[] = [];

const recording = recordingPolicy(heard);

let wh: Warehouse;
let server: PeerServer;

beforeAll(async () => {
  wh = await Warehouse.open({
    blockBytes: BS,
    tiers: [{ kind: 'host', bytes: 64 * BS }],
    policy: recording,
  });
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

const chain = (seed: number): string[] =>
  chainKeys(
    Array.from({ length: 32 }, (_, i) => seed * 100_000 + i),
    { blockTokens: 16 },
  ).keys();

/** A raw GET of `keys` with a call section (flag 0x10); what the policy heard of them. */
async function rawGet(
  keys: string[],
  call: Parameters<typeof encodeCall>[0],
): Promise<AccessInfo[]> {
  const peer = await RawPeer.open(server.port);
  await peer.handshake(secret);
  const from = heard.length;
  peer.send(
    rawFrame(
      0x12,
      1,
      Buffer.concat([keysMeta(keys), encodeCall(call)]),
      undefined,
      undefined,
      0x10,
    ),
  );
  const got = (await peer.next())!;
  expect(got.type).toBe(0x13);
  expect(got.payload.length).toBe(keys.length * BS);
  peer.close();
  return heard
    .slice(from)
    .filter((h) => keys.includes(h.key as string))
    .map((h) => h.info);
}

it("a client's own request id never matches one the server made up for another connection", async () => {
  const a = chain(1);
  const b = chain(2);
  await wh.put([...a, ...b], Buffer.alloc(4 * BS, 3));
  // The server's first made-up id (before: exactly `\u0001peer-frame-1`).
  const made = await rawGet(a, { session: 'a' });
  expect(made).toHaveLength(2);
  const id = made[0]!.request;
  expect(id).toBeDefined();
  expect(made.every((i) => i.request === id)).toBe(true);
  // Another connection names that very string, and the serial ids the server could have made.
  for (let n = 0; n <= 4; n++) {
    const own = await rawGet(b, { session: 'b', request: `\u0001peer-frame-${n}` });
    expect(own).toHaveLength(2);
    expect(own.every((i) => i.request !== id)).toBe(true);
  }
  // Made-up ids stay distinct per frame.
  const again = await rawGet(a, { session: 'a' });
  expect(again.every((i) => i.request !== id)).toBe(true);
});
