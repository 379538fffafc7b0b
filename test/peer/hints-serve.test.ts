/**
 * Sessions and hints over the peer protocol (docs/protocol.md, "Calls"), against real `kvtier serve
 * --policy return-time` processes: a 'closed' hint sent with a put, or with a get, reaches the
 * server's policy (the hinted chain is evicted before an older unhinted one, and without the hint
 * the older one goes first), on one-step puts and on two-step puts (those on a tenant's connection,
 * through its view of the warehouse). A client that sends no call section (written from the
 * protocol page, as before calls existed) is served as before; bad values are refused by the client
 * before anything is sent, and malformed call sections by the server with PROTOCOL, with the store
 * unchanged either way.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { chainKeys, connect, isKvtierError, type PeerClient } from '../../lib/index.js';
import { Capability, RequestFlag } from '../../lib/peer/protocol.js';
import { tempDir } from '../helpers.js';
import { keysMeta, rawFrame, RawPeer } from './raw.js';
import { killAll, startServe, TOKEN, writeToken, type ServeProcess } from './serve-process.js';

const BS = 4096;
const BLOCK_TOKENS = 16;
/** The host tier holds this many blocks: chains B and A (3 each) fit, C (4) makes room. */
const HOST_BLOCKS = 8;
const dir = tempDir('kvtier-hints-serve-');
const tokenFile = writeToken(dir.path);
const TENANT_TOKEN = 'tenant-a-token-0123456789abcdef';

afterAll(() => {
  killAll();
  dir.remove();
});

const chain = (seed: number, blocks: number): string[] =>
  chainKeys(
    Array.from({ length: blocks * BLOCK_TOKENS }, (_, i) => seed * 100_000 + i),
    { blockTokens: BLOCK_TOKENS },
  ).keys();

const fill = (blocks: number, bs: number, byte: number): Buffer => Buffer.alloc(blocks * bs, byte);

interface Outcome {
  /** Per key of each chain: the tier it is in on the server, -1 when gone. */
  a: number[];
  b: number[];
  c: number[];
  cStored: number;
}

/**
 * B is put first, then A, each its own session; `hinted` says how A's request ends ('closed' on
 * its put, or on a get of it after the put). Then C, in a third session, needs room. Without the
 * hint B is the older and goes first; with it, A's group is dead and goes first.
 */
async function replay(o: {
  via: 'put' | 'get';
  hinted: boolean;
  blockBytes?: number;
  /** Serve tenants from this config, and connect as tenant 'a'. */
  tenants?: string;
}): Promise<Outcome> {
  const bs = o.blockBytes ?? BS;
  const serve = await startServe({
    blockBytes: bs,
    hostBytes: HOST_BLOCKS * bs,
    ...(o.tenants === undefined ? { tokenFile } : {}),
    extra: ['--policy', 'return-time', ...(o.tenants ? ['--tenants', o.tenants] : [])],
  });
  const client = await connect(
    `127.0.0.1:${serve.port}`,
    o.tenants ? { token: TENANT_TOKEN, tenant: 'a' } : { token: TOKEN },
  );
  try {
    const [a, b, c] = [chain(1, 3), chain(2, 3), chain(3, 4)];
    const hint = o.hinted ? { hint: 'closed' as const } : {};
    expect((await client.put(b, fill(3, bs, 2), { session: 'sB', request: 'rB' })).stored).toBe(3);
    const aPut = await client.put(a, fill(3, bs, 1), {
      session: 'sA',
      request: 'rA',
      ...(o.via === 'put' ? hint : {}),
    });
    expect(aPut.stored).toBe(3);
    if (o.via === 'get') {
      const got = await client.get(a, Buffer.alloc(3 * bs), { session: 'sA', ...hint });
      expect(got.count).toBe(3);
    }
    const cPut = await client.put(c, fill(4, bs, 3), { session: 'sC', request: 'rC' });
    // Looked up without a call section, as a client from before calls would.
    const tiers = async (keys: string[]): Promise<number[]> =>
      o.tenants
        ? (await client.lookup(keys)).present.map((p) => (p ? 0 : -1))
        : serveLookup(serve, keys);
    return { a: await tiers(a), b: await tiers(b), c: await tiers(c), cStored: cPut.stored };
  } finally {
    await client.close();
    await serve.stop();
  }
}

/** Where the server holds each key, from a raw LOOKUP: 0 (its host tier) or -1 (not held). */
async function serveLookup(serve: ServeProcess, keys: string[]): Promise<number[]> {
  const peer = await RawPeer.open(serve.port);
  try {
    await peer.handshake(TOKEN);
    peer.send(rawFrame(0x14, 1, keysMeta(keys)));
    const f = (await peer.next())!;
    expect(f.type).toBe(0x15);
    return keys.map((_, i) => (f.meta.readUInt8(8 + 8 * i) === 0 ? 0 : -1));
  } finally {
    peer.close();
  }
}

const held = (tiers: number[]): number => tiers.filter((t) => t >= 0).length;

/** The hint decided which chain made room for C: A with it, B (the older) without. */
function expectHintDecided(hinted: Outcome, plain: Outcome): void {
  for (const r of [hinted, plain]) {
    expect(r.cStored).toBe(4);
    expect(held(r.c)).toBe(4);
  }
  // With the hint, A (the newer chain) lost blocks and B kept all of its own.
  expect(held(hinted.a)).toBeLessThan(3);
  expect(held(hinted.b)).toBe(3);
  // Without it, the reverse: so the outcome above is the hint's doing.
  expect(held(plain.b)).toBeLessThan(3);
  expect(held(plain.a)).toBe(3);
  // Evicted deepest first: what is left of a chain is its prefix.
  expect(hinted.a[0]).toBe(0);
  expect(plain.b[0]).toBe(0);
}

describe("a 'closed' hint reaches the server's policy", () => {
  for (const via of ['put', 'get'] as const) {
    it(`sent with a ${via}: the hinted chain is evicted first, and without it the older one`, async () => {
      expectHintDecided(await replay({ via, hinted: true }), await replay({ via, hinted: false }));
    });
  }

  it("sent with a two-step put, on a tenant's connection (1 MiB blocks, no LANDS)", async () => {
    // Tenants turn landing off, so blocks of 1 MiB go in two steps: the call rides on PUT_OFFER
    // and reaches the policy through the tenant's view (its reservation of host-tier slots).
    const config = join(dir.path, 'tenants.json');
    writeFileSync(join(dir.path, 'op.token'), 'operator-token-0123456789abcdef');
    writeFileSync(
      config,
      JSON.stringify({
        blockTokens: BLOCK_TOKENS,
        operatorTokenFile: 'op.token',
        tenants: [{ name: 'a', token: TENANT_TOKEN, quota: { host: { share: 1 } } }],
      }),
    );
    const run = (hinted: boolean): Promise<Outcome> =>
      replay({ via: 'put', hinted, blockBytes: 1 << 20, tenants: config });
    expectHintDecided(await run(true), await run(false));
  });
});

/** A call section written from docs/protocol.md ("Calls"), byte by byte. */
function section(o: {
  version?: number;
  hint?: number;
  session?: { kind: number; bytes: Buffer };
  request?: { kind: number; bytes: Buffer };
  /** Declared lengths, when they should lie. */
  lengths?: [number, number];
}): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt8(o.version ?? 1, 0);
  head.writeUInt8(o.hint ?? 0, 1);
  head.writeUInt8(o.session?.kind ?? 0, 2);
  head.writeUInt8(o.request?.kind ?? 0, 3);
  head.writeUInt16LE(o.lengths?.[0] ?? o.session?.bytes.length ?? 0, 4);
  head.writeUInt16LE(o.lengths?.[1] ?? o.request?.bytes.length ?? 0, 6);
  return Buffer.concat([
    head,
    o.session?.bytes ?? Buffer.alloc(0),
    o.request?.bytes ?? Buffer.alloc(0),
  ]);
}

const text = (s: string): { kind: number; bytes: Buffer } => ({ kind: 1, bytes: Buffer.from(s) });
const integer = (n: bigint): { kind: number; bytes: Buffer } => {
  const bytes = Buffer.alloc(8);
  bytes.writeBigInt64LE(n);
  return { kind: 2, bytes };
};

describe('the call section on the wire', () => {
  let serve: ServeProcess;
  let client: PeerClient;
  let seed = 100;

  beforeAll(async () => {
    serve = await startServe({ blockBytes: BS, hostBytes: 256 * BS, tokenFile });
    client = await connect(`127.0.0.1:${serve.port}`, { token: TOKEN });
  });

  afterAll(async () => {
    await client.close();
    await serve.stop();
  });

  /** A raw connection past its handshake, and what CHALLENGE announced. */
  async function raw(): Promise<{
    peer: RawPeer;
    capabilities: number;
    maxMeta: number;
    maxBatch: number;
  }> {
    const peer = await RawPeer.open(serve.port);
    const limits = await peer.handshake(TOKEN);
    if (!limits || !('capabilities' in limits)) throw new Error('handshake failed');
    return { peer, ...limits };
  }

  it('is announced (CALLS), with room for a section beside a full batch', async () => {
    const { peer, capabilities, maxMeta, maxBatch } = await raw();
    peer.close();
    expect(capabilities & Capability.CALLS).toBe(Capability.CALLS);
    expect(maxMeta).toBe(8 + 40 * maxBatch + 8 + 2 * 768);
  });

  it('a client that sends none (as before calls existed) is served as before', async () => {
    const keys = chain(++seed, 2);
    const { peer } = await raw();
    peer.send(rawFrame(0x10, 7, keysMeta(keys), fill(2, BS, 5)));
    const put = (await peer.next())!;
    expect(put.type).toBe(0x11);
    expect([put.meta.readUInt8(8), put.meta.readUInt8(16)]).toEqual([0, 0]);
    peer.close();
    const back = Buffer.alloc(2 * BS);
    expect((await client.get(keys, back, { session: 7 })).count).toBe(2);
    expect(back.equals(fill(2, BS, 5))).toBe(true);
  });

  it('a section written from the protocol page is accepted on PUT, GET and LOOKUP', async () => {
    const keys = chain(++seed, 2);
    const { peer } = await raw();
    // The page's example, byte for byte.
    expect(section({ hint: 2, session: text('chat-42') }).toString('hex')).toBe(
      '0102010007000000' + Buffer.from('chat-42').toString('hex'),
    );
    const call = section({ hint: 2, session: text('chat-42'), request: integer(-5n) });
    const meta = Buffer.concat([keysMeta(keys), call]);
    peer.send(rawFrame(0x10, 1, meta, fill(2, BS, 6), undefined, RequestFlag.CALL));
    const put = (await peer.next())!;
    expect(put.type).toBe(0x11);
    expect(put.meta.readUInt8(8)).toBe(0);
    peer.send(rawFrame(0x12, 2, meta, undefined, undefined, RequestFlag.CALL));
    const got = (await peer.next())!;
    expect(got.type).toBe(0x13);
    expect(got.payload.equals(fill(2, BS, 6))).toBe(true);
    peer.send(rawFrame(0x14, 3, meta, undefined, undefined, RequestFlag.CALL));
    const look = (await peer.next())!;
    expect(look.type).toBe(0x15);
    expect(look.meta.readUInt32LE(4)).toBe(2); // the prefix
    peer.close();
  });

  const malformed: [string, Buffer][] = [
    ['no section at all', Buffer.alloc(0)],
    ['a section shorter than its head', Buffer.alloc(5, 1)],
    ['an unknown version', section({ version: 2 })],
    ['an unknown hint', section({ hint: 3 })],
    ['an unknown id kind', section({ session: { kind: 3, bytes: Buffer.from('x') } })],
    ['lengths that do not add up', section({ session: text('abc'), lengths: [4, 0] })],
    ['an empty session', section({ session: text('') })],
    ['a session of 257 characters', section({ session: text('s'.repeat(257)) })],
    [
      'a session that is not UTF-8',
      section({ session: { kind: 1, bytes: Buffer.from([0xc3, 0x28]) } }),
    ],
    ['an integer of 4 bytes', section({ request: { kind: 2, bytes: Buffer.alloc(4) } })],
    ['an integer past 2^53', section({ request: integer(2n ** 53n) })],
    ['bytes for an absent id', section({ session: { kind: 0, bytes: Buffer.from('x') } })],
  ];
  for (const [what, call] of malformed) {
    it(`a PUT with ${what} is refused with PROTOCOL, storing nothing`, async () => {
      const keys = chain(++seed, 2);
      const { peer } = await raw();
      const meta = Buffer.concat([keysMeta(keys), call]);
      peer.send(rawFrame(0x10, 9, meta, fill(2, BS, 7), undefined, RequestFlag.CALL));
      const f = (await peer.next())!;
      expect(f.type).toBe(0x05);
      expect(f.requestId).toBe(0);
      expect(f.meta.readUInt32LE(0)).toBe(1); // PROTOCOL
      await peer.ended; // and the connection is closed
      expect((await client.lookup(keys)).present).toEqual([false, false]);
    });
  }

  it('bad values are refused by the client before anything is sent', async () => {
    const keys = chain(++seed, 2);
    const bad: Record<string, unknown>[] = [
      { hint: 'later' },
      { hint: 1 },
      { session: '' },
      { session: 's'.repeat(257) },
      { session: 1.5 },
      { session: Number.MAX_SAFE_INTEGER + 1 },
      { session: { id: 1 } },
      { request: '\ud800' },
      { session: 'a\udc00b' },
    ];
    const code = async (f: () => Promise<unknown>): Promise<string> =>
      f().then(
        () => 'resolved',
        (e: unknown) => (isKvtierError(e) ? e.code : String(e)),
      );
    const dst = Buffer.alloc(2 * BS, 9);
    for (const o of bad) {
      expect(await code(() => client.put(keys, fill(2, BS, 8), o as never))).toBe(
        'KVTIER_BAD_ARGUMENT',
      );
      expect(await code(() => client.get(keys, dst, o as never))).toBe('KVTIER_BAD_ARGUMENT');
      expect(await code(() => client.lookup(keys, o as never))).toBe('KVTIER_BAD_ARGUMENT');
    }
    expect(dst.equals(Buffer.alloc(2 * BS, 9))).toBe(true);
    expect((await client.lookup(keys)).present).toEqual([false, false]);
    // The same call, well formed, goes through: strings with pairs, integers, both hints.
    const good = { session: 'chat \u{1F600}', request: -3, hint: 'soon' as const };
    expect((await client.put(keys, fill(2, BS, 8), good)).stored).toBe(2);
    expect((await client.lookup(keys, good)).prefix).toBe(2);
  });

  it('a call larger than one frame is split into frames that each fit', async () => {
    // More keys than one frame takes: the section costs metadata room, never a refused frame.
    const n = client.maxBatch + 3;
    const keys = chain(++seed, n);
    const r = await client.lookup(keys, { session: 'x'.repeat(256), request: 'r'.repeat(256) });
    expect(r.present).toHaveLength(n);
    expect(r.present.every((p) => !p)).toBe(true);
  });
});
