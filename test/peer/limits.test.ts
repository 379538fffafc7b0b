/**
 * What a hostile or broken client can make the server hold, in one process over real sockets:
 * answers a client never reads stay bounded by the backpressure limit, idle unauthenticated
 * sockets cannot lock out a client with the token, a frame stalled part way is closed and its
 * landing slots come back, and each of those closes is explained by an ERROR frame first.
 */
import { afterEach, describe, expect, it } from 'vitest';

import { chainKeys, connect, PeerServer, Warehouse } from '../../lib/index.js';
import { randomBytes, tempDir, until } from '../helpers.js';
import { keysMeta, rawFrame, RawPeer, type RawFrame } from './raw.js';

const BS = 64 * 1024;
const secret = 'limits-test-secret-0123456789abcd';
const cleanup: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

const keysFor = (n: number, seed: number): string[] =>
  chainKeys(
    new Uint32Array(n * 4).map((_, i) => i + seed * 7919),
    { blockTokens: 4, namespace: 'limits' },
  ).keys();

async function start(
  tiers: 'file' | 'host+file',
  options: Partial<Parameters<typeof PeerServer.start>[0]> = {},
): Promise<{ wh: Warehouse; server: PeerServer }> {
  const dir = tempDir('kvtier-limits-');
  const wh = await Warehouse.open({
    blockBytes: BS,
    tiers: [
      ...(tiers === 'host+file' ? [{ kind: 'host' as const, bytes: 256 * BS }] : []),
      { kind: 'file', dir: dir.path, bytes: 512 * BS },
    ],
  });
  const server = PeerServer.start({
    host: '127.0.0.1',
    port: 0,
    warehouse: wh,
    secret: Buffer.from(secret),
    ...options,
  });
  cleanup.push(async () => {
    await server.close(1000);
    await wh.close();
    dir.remove();
  });
  return { wh, server };
}

async function authenticated(port: number): Promise<RawPeer> {
  const raw = await RawPeer.open(port);
  cleanup.push(() => raw.close());
  expect(await raw.handshake(secret)).toMatchObject({ blockBytes: BS });
  return raw;
}

function errorOf(f: RawFrame | undefined): { code: number; text: string } {
  expect(f?.type).toBe(0x05);
  const len = f!.meta.readUInt32LE(4);
  return { code: f!.meta.readUInt32LE(0), text: f!.meta.toString('utf8', 8, 8 + len) };
}

describe('answers a client does not read', () => {
  it('stop the server reading its GETs: queued answer bytes stay under the limit and one answer, and all arrive once read', async () => {
    const limit = 1 << 20; // 16 blocks
    const { wh, server } = await start('file', { maxQueuedBytes: limit });
    const blocks = 64;
    const keys = keysFor(blocks, 1);
    const src = randomBytes(blocks * BS);
    await wh.put(keys, src);
    expect(wh.stats().tiers[0]!.kind).toBe('file');

    const raw = await authenticated(server.port);
    raw.socket.pause(); // reads nothing from here on: answers pile up in the kernel, then the server
    const perGet = 4;
    const gets = 512; // 128 MiB of answers, were they all queued
    const asked = new Map<number, number[]>();
    for (let g = 0; g < gets; g++) {
      const at = Array.from({ length: perGet }, (_, i) => (g * 5 + i * 11) % blocks);
      asked.set(g + 1, at);
      raw.send(rawFrame(0x12, g + 1, keysMeta(at.map((i) => keys[i]!))));
    }
    const answer = perGet * BS;
    // Without the limit nothing would ever pause: every GET is read and answered into memory.
    await until('the server to stop reading the connection', () => server.backpressure.pauses > 0);
    await until('answers to pile up in the server', () => server.netStats().outQueued > limit / 2);
    const paused = server.backpressure;
    // One GET holds its metadata and the most answer bytes it can cause; reading stops right
    // after the frame that crosses the limit, and answer bytes queued never exceed what was held.
    const header = 24 + 8 + 8 * perGet;
    const getHold = 8 + 40 * perGet + answer;
    expect(paused.maxQueued).toBeLessThanOrEqual(limit + getHold);
    expect(paused.maxAnswerQueued).toBeLessThanOrEqual(
      limit + answer + header * (limit / answer + 2),
    );

    raw.socket.resume();
    const seen = new Set<number>();
    while (seen.size < gets) {
      const f = await raw.next();
      expect(f?.type).toBe(0x13);
      const at = asked.get(f!.requestId)!;
      expect(f!.meta.readUInt32LE(0)).toBe(perGet);
      for (let i = 0; i < perGet; i++) expect(f!.meta[8 + 8 * i]).toBe(0);
      expect(f!.payload.length).toBe(answer);
      for (let i = 0; i < perGet; i++) {
        const want = src.subarray(at[i]! * BS, (at[i]! + 1) * BS);
        expect(f!.payload.subarray(i * BS, (i + 1) * BS).equals(want)).toBe(true);
      }
      seen.add(f!.requestId);
    }
    const after = server.backpressure;
    expect(after.maxQueued).toBeLessThanOrEqual(limit + getHold);
    expect(after.maxAnswerQueued).toBeLessThanOrEqual(
      limit + answer + header * (limit / answer + 2),
    );
    expect(after.pauses).toBeGreaterThanOrEqual(paused.pauses);
    await until('the answer queue to drain', () => server.netStats().outQueued === 0);
  });
});

describe('denial of service', () => {
  it('hundreds of idle unauthenticated sockets do not lock out a client with the token', async () => {
    const maxHandshakes = 16;
    // A handshake timeout far beyond the test: only the handshake budget can let the client in.
    const { server } = await start('host+file', { maxHandshakes, handshakeTimeoutMs: 600_000 });
    const idle: RawPeer[] = [];
    for (let i = 0; i < 300; i++) idle.push(await RawPeer.open(server.port));
    cleanup.push(() => idle.forEach((r) => r.close()));
    await until(
      'the oldest idle sockets to make room',
      () => server.netStats().handshakesEvicted >= 300 - maxHandshakes,
    );
    // The oldest were told why before the close.
    const first = errorOf(await idle[0]!.next());
    expect(first.code).toBe(4);
    expect(first.text).toMatch(/handshake/);
    await idle[0]!.ended;
    expect(server.connections).toBeLessThanOrEqual(maxHandshakes);

    const client = await connect(`127.0.0.1:${server.port}`, { token: secret });
    try {
      const keys = keysFor(4, 2);
      const src = randomBytes(4 * BS);
      expect((await client.put(keys, src)).stored).toBe(4);
      const dst = Buffer.alloc(4 * BS);
      expect((await client.get(keys, dst)).count).toBe(4);
      expect(dst.equals(src)).toBe(true);
    } finally {
      await client.close();
    }
  });

  it('a connection beyond --max-connections is told LIMIT before it is closed', async () => {
    const { server } = await start('host+file', { maxConnections: 1 });
    const first = await authenticated(server.port);
    const extra = await RawPeer.open(server.port);
    cleanup.push(() => extra.close());
    const e = errorOf(await extra.next());
    expect(e).toEqual({ code: 4, text: 'too many connections' });
    await extra.ended;
    expect(server.netStats().refused).toBe(1);
    // The first connection is unaffected.
    const keys = keysFor(1, 3);
    first.send(rawFrame(0x14, 7, keysMeta(keys)));
    expect((await first.next())?.requestId).toBe(7);
  });

  it('a frame whose payload stalls part way is closed with LIMIT, and its landing slots come back', async () => {
    const { wh, server } = await start('host+file', { payloadTimeoutMs: 300, landingIdleMs: 200 });
    const raw = await authenticated(server.port);
    // A first put makes the server claim landing slots.
    raw.send(rawFrame(0x10, 1, keysMeta(keysFor(2, 4)), randomBytes(2 * BS)));
    expect((await raw.next())?.type).toBe(0x11);
    await until('landing slots to be claimed', () => wh.stats().tiers[0]!.usedBlocks > 2);
    const before = server.netStats();
    const cut = keysFor(4, 5);
    const frame = rawFrame(0x10, 2, keysMeta(cut), randomBytes(4 * BS));
    raw.send(frame.subarray(0, frame.length - BS - 100)); // then nothing, and no hang-up
    const e = errorOf(await raw.next());
    expect(e.code).toBe(4);
    expect(e.text).toMatch(/partly received frame/);
    await raw.ended;
    const after = server.netStats();
    expect(after.stalled).toBe(before.stalled + 1);
    // The payload was landing in four slots, and all four went back when the connection closed.
    expect(after.landingTaken - before.landingTaken).toBe(4);
    expect(after.landingReturned - before.landingReturned).toBe(4);
    expect(wh.lookup(cut).tiers).toEqual([-1, -1, -1, -1]);
    const stored = (): number => wh.keys().filter((k) => wh.lookup([k]).tiers[0] === 0).length;
    await until(
      'the host tier to hold only blocks',
      () => wh.stats().tiers[0]!.usedBlocks === stored(),
    );
  });

  it('a frame too large is refused with a LIMIT error frame before the close', async () => {
    const { server } = await start('host+file');
    const raw = await authenticated(server.port);
    raw.send(rawFrame(0x10, 1, keysMeta(keysFor(1, 6)), Buffer.alloc(0), 2 ** 40));
    const e = errorOf(await raw.next());
    expect(e.code).toBe(4);
    expect(e.text).toMatch(/payload of 1099511627776 bytes exceeds the limit/);
    await raw.ended;
    expect(server.netStats().errorFrames).toBeGreaterThanOrEqual(1);
  });
});
