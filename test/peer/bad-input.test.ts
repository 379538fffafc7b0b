import { createConnection } from 'node:net';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { chainKeys, connect } from '../../lib/index.js';
import { native } from '../../lib/core/native.js';
import { randomBytes, tempDir, until } from '../helpers.js';
import { keysMeta, RawPeer, rawFrame } from './raw.js';
import {
  killAll,
  runCli,
  startServe,
  TOKEN,
  writeToken,
  type ServeProcess,
} from './serve-process.js';

const BS = 64 * 1024;
const MAX_CONNECTIONS = 8;
const dirs: { remove(): void }[] = [];
let server: ServeProcess;
let tokenFile: string;
let url: string;
let base: string;

function keysFor(n: number, seed: number): string[] {
  const tokens = new Uint32Array(n * 4).map((_, i) => i + seed * 7919);
  return chainKeys(tokens, { blockTokens: 4, namespace: `bad-${seed}` }).keys();
}

/** The server still serves a well-behaved client, bytes intact. */
async function stillServes(): Promise<void> {
  const c = await connect(url, { tokenFile });
  try {
    const keys = keysFor(2, Math.floor(Math.random() * 1e6));
    const src = randomBytes(2 * BS);
    await c.put(keys, src);
    const dst = Buffer.alloc(2 * BS);
    expect((await c.get(keys, dst)).count).toBe(2);
    expect(dst.equals(src)).toBe(true);
  } finally {
    await c.close();
  }
}

function errorKind(f: { meta: Buffer } | undefined): number | undefined {
  return f ? f.meta.readUInt32LE(0) : undefined;
}

beforeAll(async () => {
  const d = tempDir('kvtier-peer-bad-');
  dirs.push(d);
  base = d.path;
  tokenFile = writeToken(d.path);
  server = await startServe({
    blockBytes: BS,
    hostBytes: 64 * BS,
    tokenFile,
    extra: [
      '--max-connections',
      String(MAX_CONNECTIONS),
      '--max-handshakes',
      String(MAX_CONNECTIONS),
    ],
  });
  url = `kvtier://127.0.0.1:${server.port}`;
});

afterAll(() => {
  killAll();
  dirs.forEach((d) => d.remove());
});

describe('kvtier serve under bad input', () => {
  it('a wrong token: KVTIER_AUTH, and the log names the peer but never the secret', async () => {
    const wrong = 'not-the-secret-but-long-enough';
    await expect(connect(url, { token: wrong })).rejects.toMatchObject({ code: 'KVTIER_AUTH' });
    const line = await server.waitFor('auth_failed');
    expect(line.remote).toMatch(/^127\.0\.0\.1:/);
    const all = JSON.stringify(server.logs) + server.stderr();
    expect(all).not.toContain(TOKEN);
    expect(all).not.toContain(wrong);
    await stillServes();
  });

  it('a client that does not know the secret gets an AUTH error and no server proof', async () => {
    const peer = await RawPeer.open(server.port);
    const answer = await peer.handshake('wrong-secret-wrong-secret');
    expect(answer && 'type' in answer ? answer.type : undefined).toBe(0x05);
    expect(errorKind(answer as { meta: Buffer })).toBe(2);
    await peer.ended;
  });

  it('a client speaking another version gets a VERSION error and the connection closes', async () => {
    const peer = await RawPeer.open(server.port);
    const answer = await peer.handshake(TOKEN, { version: 2 });
    expect(answer && 'type' in answer ? answer.type : undefined).toBe(0x05);
    expect(errorKind(answer as { meta: Buffer })).toBe(3);
    await peer.ended;
    await stillServes();
  });

  it('a block size mismatch: KVTIER_PROTOCOL naming both sizes', async () => {
    const e = await connect(url, { token: TOKEN, blockBytes: 4096 }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'KVTIER_PROTOCOL' });
    expect(String((e as Error).message)).toMatch(/65536.*4096/);
    await stillServes();
  });

  it('a truncated frame, then a hang-up, leaves the server serving', async () => {
    const peer = await RawPeer.open(server.port);
    const hello = rawFrame(0x01, 0, Buffer.alloc(48));
    peer.send(hello.subarray(0, 30));
    peer.close();
    await stillServes();
  });

  it('bad magic, an oversized handshake and an unknown first message each close the connection', async () => {
    for (const bytes of [
      Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
      rawFrame(0x01, 0, Buffer.alloc(48), Buffer.alloc(0), 1 << 20), // payload before auth
      rawFrame(0x01, 0, Buffer.alloc(8192)), // metadata beyond the handshake limit
      rawFrame(0x12, 1, keysMeta(keysFor(1, 1))), // a request before authenticating
      rawFrame(0x77, 0, Buffer.alloc(4)),
    ]) {
      const peer = await RawPeer.open(server.port);
      peer.send(bytes);
      await peer.ended;
      expect(peer.closed).toBe(true);
    }
    await stillServes();
  });

  it('after authenticating: lengths beyond the limits, malformed batches and unknown types close only that connection', async () => {
    const bystander = await connect(url, { tokenFile });
    try {
      const cases: [
        string,
        (limits: { maxBatch: number; maxPayload: number }) => Buffer,
        number,
      ][] = [
        [
          'payload beyond the limit',
          (l) => rawFrame(0x10, 1, keysMeta([]), Buffer.alloc(0), l.maxPayload + 1),
          -1,
        ],
        [
          'too many descriptors',
          (l) => rawFrame(0x12, 1, keysMeta(keysFor(1, 2), l.maxBatch + 1)),
          1,
        ],
        [
          'a batch count the metadata does not hold',
          () => rawFrame(0x12, 1, keysMeta(keysFor(2, 3), 5)),
          1,
        ],
        [
          'a key of length 0',
          () => rawFrame(0x12, 1, Buffer.concat([keysMeta([], 1), Buffer.alloc(40)])),
          1,
        ],
        [
          'a put whose payload does not match its keys',
          () => rawFrame(0x10, 1, keysMeta(keysFor(2, 4)), Buffer.alloc(BS)),
          1,
        ],
        ['an unknown message type', () => rawFrame(0x7e, 1, keysMeta([])), 1],
        ['a result type sent to the server', () => rawFrame(0x13, 1, keysMeta([])), 1],
        // Verbs-only frames and flags on a TCP connection (Transport.refuses).
        ['VERBS_CONNECT on a tcp connection', () => rawFrame(0x20, 0, Buffer.alloc(28)), 1],
        ['RELEASE on a tcp connection', () => rawFrame(0x22, 1, Buffer.alloc(0)), 1],
        [
          'a GET with REMOTE_READ on a tcp connection',
          () => rawFrame(0x12, 1, keysMeta(keysFor(1, 7)), Buffer.alloc(0), 0, 0x02),
          1,
        ],
      ];
      for (const [what, make, kind] of cases) {
        const peer = await RawPeer.open(server.port);
        const limits = await peer.handshake(TOKEN);
        expect(limits && 'maxBatch' in limits, what).toBe(true);
        peer.send(make(limits as { maxBatch: number; maxPayload: number }));
        const answer = await peer.next();
        if (kind > 0) {
          expect(answer?.type, what).toBe(0x05);
          expect([1, 4], what).toContain(errorKind(answer));
        }
        await peer.ended;
        expect(peer.closed, what).toBe(true);
      }
      // The bystander's connection was never disturbed.
      const keys = keysFor(1, 5);
      const src = randomBytes(BS);
      await bystander.put(keys, src);
      const dst = Buffer.alloc(BS);
      expect((await bystander.get(keys, dst)).count).toBe(1);
      expect(dst.equals(src)).toBe(true);
    } finally {
      await bystander.close();
    }
  });

  it('a raw client written from docs/protocol.md puts and gets a block', async () => {
    const peer = await RawPeer.open(server.port);
    expect(await peer.handshake(TOKEN)).toMatchObject({ blockBytes: BS });
    const keys = keysFor(1, 6);
    const block = randomBytes(BS);
    peer.send(rawFrame(0x10, 7, keysMeta(keys), block));
    const put = await peer.next();
    expect(put).toMatchObject({ type: 0x11, requestId: 7 });
    expect(put!.meta.readUInt32LE(0)).toBe(1);
    expect(put!.meta.readUInt8(8)).toBe(0);
    peer.send(rawFrame(0x12, 8, keysMeta(keys)));
    const got = await peer.next();
    expect(got).toMatchObject({ type: 0x13, requestId: 8 });
    expect(got!.meta.readUInt8(8)).toBe(0);
    expect(got!.payload.equals(block)).toBe(true);
    // Sent from the host tier: flagged with the CRC-32C computed when the block was stored.
    expect(got!.meta.readUInt8(9) & 1).toBe(1);
    expect(got!.meta.readUInt32LE(12)).toBe(native().crc32c(block));
    peer.close();
  });

  it('a two-step put from a raw client: offer, accept, data placed in the slots, result', async () => {
    const peer = await RawPeer.open(server.port);
    expect(await peer.handshake(TOKEN)).toMatchObject({ blockBytes: BS });
    const keys = keysFor(3, 7);
    const blocks = randomBytes(3 * BS);
    peer.send(rawFrame(0x10, 1, keysMeta(keys.slice(1, 2)), blocks.subarray(BS, 2 * BS)));
    expect(await peer.next()).toMatchObject({ type: 0x11 });
    peer.send(rawFrame(0x18, 9, keysMeta(keys)));
    const accept = await peer.next();
    expect(accept).toMatchObject({ type: 0x19, requestId: 9 });
    const statuses = [0, 1, 2].map((i) => accept!.meta.readUInt8(8 + 8 * i));
    expect(statuses).toEqual([0, 4, 0]); // key 1 is already there: not to be sent
    const data = Buffer.concat([blocks.subarray(0, BS), blocks.subarray(2 * BS)]);
    peer.send(rawFrame(0x1a, 9, Buffer.from(accept!.meta), data));
    const result = await peer.next();
    expect(result).toMatchObject({ type: 0x11, requestId: 9 });
    expect([0, 1, 2].map((i) => result!.meta.readUInt8(8 + 8 * i))).toEqual([0, 4, 0]);
    peer.send(rawFrame(0x12, 10, keysMeta(keys)));
    const got = await peer.next();
    expect(got!.payload.equals(blocks)).toBe(true);
    peer.close();
  });

  it('put data without an offer, or not matching it, or never sent, closes the connection', async () => {
    const keys = keysFor(2, 8);
    const cases: ((p: RawPeer) => Promise<void>)[] = [
      (p) => {
        const meta = Buffer.alloc(8 + 16);
        meta.writeUInt32LE(2, 0);
        p.send(rawFrame(0x1a, 3, meta, randomBytes(2 * BS)));
        return Promise.resolve();
      },
      async (p) => {
        p.send(rawFrame(0x18, 4, keysMeta(keys)));
        const accept = await p.next();
        const meta = Buffer.from(accept!.meta);
        meta.writeUInt8(4, 8); // claims the server did not want block 0
        p.send(rawFrame(0x1a, 4, meta, randomBytes(BS)));
      },
    ];
    for (const run of cases) {
      const peer = await RawPeer.open(server.port);
      await peer.handshake(TOKEN);
      await run(peer);
      await peer.ended;
      expect(peer.closed).toBe(true);
    }
    // The slots of the broken offer were given back: the same keys can be put and read.
    await stillServes();
    const c = await connect(url, { tokenFile });
    try {
      const src = randomBytes(2 * BS);
      expect((await c.put(keys, src)).stored).toBe(2);
      const dst = Buffer.alloc(2 * BS);
      await c.get(keys, dst);
      expect(dst.equals(src)).toBe(true);
    } finally {
      await c.close();
    }
  });

  it('a client asking for a transport the server did not offer gets a TRANSPORT error', async () => {
    const peer = await RawPeer.open(server.port);
    const answer = await peer.handshake(TOKEN, { transport: 1 });
    expect(answer && 'type' in answer ? answer.type : undefined).toBe(0x05);
    expect(errorKind(answer as { meta: Buffer })).toBe(8);
    await peer.ended;
  });

  it('a flood of connections is bounded: the oldest unauthenticated ones make room, told why, and the server keeps serving', async () => {
    const sockets = await Promise.all(
      Array.from(
        { length: 4 * MAX_CONNECTIONS },
        () =>
          new Promise<ReturnType<typeof createConnection>>((resolve) => {
            const s = createConnection({ host: '127.0.0.1', port: server.port }, () => resolve(s));
            s.on('error', () => resolve(s));
          }),
      ),
    );
    const closed = sockets.map(() => false);
    const told: Buffer[] = sockets.map(() => Buffer.alloc(0));
    sockets.forEach((s, i) => {
      s.on('data', (d: Buffer) => (told[i] = Buffer.concat([told[i]!, d])));
      s.on('close', () => (closed[i] = true));
      if (s.destroyed) closed[i] = true;
    });
    // --max-handshakes is MAX_CONNECTIONS: all but the newest MAX_CONNECTIONS are closed.
    await until(
      'the excess connections to close',
      () => closed.filter(Boolean).length >= 3 * MAX_CONNECTIONS,
    );
    const errors = told.filter((b) => b.length >= 32 && b.readUInt8(4) === 0x05);
    expect(errors.length).toBeGreaterThanOrEqual(3 * MAX_CONNECTIONS);
    expect(errors.every((b) => b.readUInt32LE(24) === 4)).toBe(true); // LIMIT
    await until('the server to log the closes', () =>
      server.logs.some(
        (l) => l.event === 'connection_closed' && /handshake/.test(String(l.reason)),
      ),
    );
    sockets.forEach((s) => s.destroy());
    // A client with the token gets in at once: the idle sockets are the oldest.
    await stillServes();
    expect(server.child.exitCode).toBe(null);
  });

  it('a connection that never authenticates is closed', async () => {
    const fast = await startServe({
      blockBytes: BS,
      hostBytes: 4 * BS,
      tokenFile,
      extra: ['--handshake-timeout', '200'],
    });
    const peer = await RawPeer.open(fast.port);
    await peer.ended;
    expect(peer.closed).toBe(true);
    await fast.stop();
  });
});

describe('kvtier serve refuses bad options', () => {
  it('an unreadable or short token file, a bad address, verbs without RDMA', async () => {
    const shortDir = tempDir('kvtier-short-');
    dirs.push(shortDir);
    const shortToken = writeToken(shortDir.path, 'short');
    const cases: [string[], RegExp][] = [
      [['--token-file', join(base, 'missing')], /KVTIER_BAD_ARGUMENT/],
      [['--token-file', shortToken], /KVTIER_BAD_ARGUMENT/],
      [['--listen', 'nowhere'], /KVTIER_BAD_ARGUMENT/],
      [['--transport', 'verbs'], /KVTIER_NOT_AVAILABLE/],
      [['--transport', 'carrier-pigeon'], /KVTIER_BAD_ARGUMENT/],
      [['--max-handshakes', '0'], /--max-handshakes must be/],
      [['--payload-timeout', 'soon'], /--payload-timeout must be/],
    ];
    for (const [args, want] of cases) {
      const tf = args.includes('--token-file') ? [] : ['--token-file', tokenFile];
      const listen = args.includes('--listen') ? [] : ['--listen', '127.0.0.1:0'];
      const r = await runCli([
        'serve',
        ...listen,
        '--block-bytes',
        '64KiB',
        '--host-bytes',
        '1MiB',
        ...tf,
        ...args,
      ]);
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.stderr, args.join(' ')).toMatch(want);
    }
  });
});
