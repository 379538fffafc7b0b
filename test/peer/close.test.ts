/**
 * PeerClient.close with requests in flight, against a peer that authenticates and then never
 * answers (written here with node:net and the protocol's codecs): close settles every request
 * it leaves behind (KVTIER_PEER) and resolves, and a closed client refuses new requests.
 */
import { createServer, type Server, type Socket } from 'node:net';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { chainKeys, connect, isKvtierError } from '../../lib/index.js';
import { clientProof, serverProof } from '../../lib/peer/auth.js';
import {
  decodeAuth,
  decodeHello,
  encodeChallenge,
  encodeReady,
} from '../../lib/peer/handshake-codec.js';
import { frame, maxMetaFor, MsgType } from '../../lib/peer/protocol.js';
import { until } from '../helpers.js';
import { TOKEN } from './serve-process.js';

const BS = 4096;
const MAX_BATCH = 64;

/** A peer that completes the handshake, then reads requests and answers none. */
function silentPeer(): { server: Server; requests: () => number } {
  let requests = 0;
  const secret = Buffer.from(TOKEN, 'utf8');
  const server = createServer((socket: Socket) => {
    let buf = Buffer.alloc(0);
    let clientNonce: Buffer | undefined;
    const serverNonce = Buffer.alloc(32, 7);
    socket.on('error', () => {});
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 24) {
        const total = 24 + buf.readUInt32LE(12) + Number(buf.readBigUInt64LE(16));
        if (buf.length < total) return;
        const type = buf.readUInt8(4);
        const meta = Buffer.from(buf.subarray(24, 24 + buf.readUInt32LE(12)));
        buf = buf.subarray(total);
        if (type === MsgType.HELLO) {
          clientNonce = decodeHello(meta).clientNonce;
          const challenge = encodeChallenge({
            version: 1,
            capabilities: 1,
            blockBytes: BS,
            maxBatch: MAX_BATCH,
            maxMeta: maxMetaFor(MAX_BATCH),
            maxPayload: MAX_BATCH * BS,
            serverNonce,
          });
          socket.write(frame(MsgType.CHALLENGE, 0, challenge));
        } else if (type === MsgType.AUTH) {
          const auth = decodeAuth(meta);
          expect(auth.proof.equals(clientProof(secret, serverNonce, clientNonce!))).toBe(true);
          const proof = serverProof(secret, clientNonce!, serverNonce);
          socket.write(frame(MsgType.READY, 0, encodeReady({ proof, transport: 0 })));
        } else {
          requests++;
        }
      }
    });
  });
  return { server, requests: () => requests };
}

let peer: ReturnType<typeof silentPeer>;
let url: string;

beforeAll(async () => {
  peer = silentPeer();
  await new Promise<void>((r) => peer.server.listen(0, '127.0.0.1', r));
  const address = peer.server.address();
  url = `127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
});

afterAll(() => new Promise<void>((r) => peer.server.close(() => r())));

describe('PeerClient.close with requests in flight', () => {
  it('settles every request it leaves behind with KVTIER_PEER, then refuses new ones', async () => {
    const c = await connect(url, { token: TOKEN, reconnect: false, timeoutMs: 600_000 });
    const keys = chainKeys(new Uint32Array(16 * 4), { blockTokens: 4, namespace: 'close' }).keys();
    const dst = Buffer.alloc(keys.length * BS);
    // Three gets asked for in one turn (they leave as one coalesced request), and a lookup.
    const inFlight = [
      c.get(keys, dst),
      c.get(keys.slice(0, 1), Buffer.alloc(BS)),
      c.get(keys.slice(1, 2), Buffer.alloc(BS)),
      c.lookup(keys),
    ].map((p) =>
      p.then(
        () => 'answered',
        (e: unknown) => (isKvtierError(e) ? e.code : String(e)),
      ),
    );
    // Every request reached the peer, so each is waiting in the client's pending table.
    await until('both requests reach the peer', () => peer.requests() >= 2);
    expect(peer.requests()).toBe(2);
    await c.close();
    expect(await Promise.all(inFlight)).toEqual([
      'KVTIER_PEER',
      'KVTIER_PEER',
      'KVTIER_PEER',
      'KVTIER_PEER',
    ]);
    await expect(c.lookup(keys)).rejects.toMatchObject({ code: 'KVTIER_CLOSED' });
    await c.close(); // a second close is a no-op
  });
});
