/**
 * What a peer client's call reaches on the server, seen from inside its policy (a recording wrapper
 * around LRU, in one process over real sockets): the session, hint and request of a put and a get
 * arrive in every AccessInfo of the request's blocks, a call split into several frames is one
 * request, calls without options carry none, and a client facing a server that does not announce
 * CALLS (as before calls existed) sends the request without its section; a raw frame whose section
 * names no request is one request, however the server serves it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  chainKeys,
  connect,
  PeerServer,
  Warehouse,
  type AccessInfo,
  type PeerClient,
} from '../../lib/index.js';
import { encodeCall } from '../../lib/peer/call-codec.js';
import type { Session } from '../../lib/peer/client/session.js';
import { tempDir } from '../helpers.js';
import { keysMeta, rawFrame, RawPeer } from './raw.js';
import { recordingPolicy, type Heard } from './recording-policy.js';

const BS = 4096;
const secret = 'hints-client-secret-0123456789abc';
/** Every insert and touch the host tier's policy heard, with its key. */
const heard: Heard[] = [];

const recording = recordingPolicy(heard);

let wh: Warehouse;
let server: PeerServer;
let client: PeerClient;
let seed = 0;

beforeAll(async () => {
  wh = await Warehouse.open({
    blockBytes: BS,
    tiers: [{ kind: 'host', bytes: 4096 * BS }],
    policy: recording,
  });
  server = PeerServer.start({
    host: '127.0.0.1',
    port: 0,
    warehouse: wh,
    secret: Buffer.from(secret),
  });
  client = await connect(`127.0.0.1:${server.port}`, { token: secret });
});

afterAll(async () => {
  await client.close();
  await server.close();
  await wh.close();
});

const chain = (blocks: number): string[] =>
  chainKeys(
    Array.from({ length: blocks * 16 }, (_, i) => ++seed * 100_000 + i),
    { blockTokens: 16 },
  ).keys();

/** What the policy heard of these keys since `from`. */
const of = (keys: string[], from: number): AccessInfo[] =>
  heard
    .slice(from)
    .filter((h) => keys.includes(h.key as string))
    .map((h) => h.info);

describe("a peer client's call, as the server's policy hears it", () => {
  it('a put and a get carry session, hint and request into every block', async () => {
    const keys = chain(3);
    let from = heard.length;
    await client.put(keys, Buffer.alloc(3 * BS, 1), {
      session: 'chat-1',
      hint: 'soon',
      request: 'r1',
    });
    const put = of(keys, from);
    expect(put).toHaveLength(3);
    expect(new Set(put.map((i) => i.hint))).toEqual(new Set(['soon']));
    expect(put.every((i) => i.session !== undefined && i.session === put[0]!.session)).toBe(true);
    expect(new Set(put.map((i) => i.request)).size).toBe(1);
    from = heard.length;
    await client.get(keys, Buffer.alloc(3 * BS), {
      session: 'chat-1',
      hint: 'closed',
      request: 'r1',
    });
    const get = of(keys, from);
    expect(get).toHaveLength(3);
    expect(get.every((i) => i.hint === 'closed')).toBe(true);
    // The same session and the same request as the put: one conversation, one request.
    expect(get.every((i) => i.session === put[0]!.session && i.request === put[0]!.request)).toBe(
      true,
    );
  });

  it('a call split into several frames is one request; separate calls are separate ones', async () => {
    const n = client.maxBatch + 5;
    const keys = chain(n);
    const from = heard.length;
    await client.put(keys, Buffer.alloc(n * BS, 2), { session: 7 });
    const put = of(keys, from);
    expect(put).toHaveLength(n);
    expect(new Set(put.map((i) => i.request)).size).toBe(1);
    const again = heard.length;
    await client.get(keys, Buffer.alloc(n * BS), { session: 7 });
    const get = of(keys, again);
    expect(new Set(get.map((i) => i.request)).size).toBe(1);
    expect(get[0]!.request).not.toBe(put[0]!.request);
    expect(get[0]!.session).toBe(put[0]!.session);
  });

  it('calls without options carry no session or hint', async () => {
    const keys = chain(2);
    const from = heard.length;
    await client.put(keys, Buffer.alloc(2 * BS, 3));
    await client.get(keys, Buffer.alloc(2 * BS));
    const all = of(keys, from);
    expect(all).toHaveLength(4);
    expect(all.every((i) => i.session === undefined && i.hint === undefined)).toBe(true);
  });

  it('to a server without CALLS the request goes without its section, and still works', async () => {
    const keys = chain(2);
    // As if the server were older: its CHALLENGE did not announce CALLS.
    const s = (client as unknown as { sessions: { session: Session } }).sessions.session;
    s.calls = false;
    try {
      const from = heard.length;
      const put = await client.put(keys, Buffer.alloc(2 * BS, 4), { session: 's', hint: 'closed' });
      expect(put.stored).toBe(2);
      const back = Buffer.alloc(2 * BS);
      expect((await client.get(keys, back, { session: 's' })).count).toBe(2);
      expect(back.equals(Buffer.alloc(2 * BS, 4))).toBe(true);
      const all = of(keys, from);
      expect(all).toHaveLength(4);
      expect(all.every((i) => i.session === undefined && i.hint === undefined)).toBe(true);
      // Bad values are still refused, whatever the server.
      await expect(client.put(keys, back, { hint: 'never' as never })).rejects.toMatchObject({
        code: 'KVTIER_BAD_ARGUMENT',
      });
    } finally {
      s.calls = true;
    }
  });
});

describe('a raw frame whose section names no request', () => {
  it('is one request, though its blocks are lent from memory and read up from the file tier', async () => {
    const dir = tempDir('kvtier-hints-raw-');
    const two = await Warehouse.open({
      blockBytes: BS,
      tiers: [
        { kind: 'host', bytes: 4 * BS },
        { kind: 'file', dir: dir.path, bytes: 64 * BS },
      ],
      policy: recording,
    });
    const srv = PeerServer.start({
      host: '127.0.0.1',
      port: 0,
      warehouse: two,
      secret: Buffer.from(secret),
    });
    try {
      const keys = chain(4);
      await two.put(keys.slice(0, 2), Buffer.alloc(2 * BS, 5));
      // Two more blocks push the first two down to the file tier.
      await two.put(chain(2), Buffer.alloc(2 * BS, 6));
      await two.put(keys.slice(2), Buffer.alloc(2 * BS, 7));
      expect(two.lookup(keys).tiers).toEqual([1, 1, 0, 0]);
      const peer = await RawPeer.open(srv.port);
      await peer.handshake(secret);
      const from = heard.length;
      const call = encodeCall({ session: 'raw', hint: 'soon' });
      peer.send(
        rawFrame(0x12, 1, Buffer.concat([keysMeta(keys), call]), undefined, undefined, 0x10),
      );
      const got = (await peer.next())!;
      expect(got.type).toBe(0x13);
      expect(got.payload.length).toBe(4 * BS);
      peer.close();
      const infos = of(keys, from);
      // Each block heard of (lent ones in the host tier; the others read up and placed there).
      expect(new Set(heard.slice(from).map((h) => h.key)).size).toBeGreaterThanOrEqual(4);
      expect(infos.every((i) => i.hint === 'soon' && i.session !== undefined)).toBe(true);
      expect(new Set(infos.map((i) => i.request)).size).toBe(1);
    } finally {
      await srv.close();
      await two.close();
      dir.remove();
    }
  });
});
