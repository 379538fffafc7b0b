/**
 * Tenants in the peer protocol, in one process over real sockets: AUTH names a tenant and is
 * signed with that tenant's token; the connection is then served from that tenant's store only.
 * The stores here are a minimal stand-in for warehouse.tenant(name) (each maps keys through an
 * HMAC with its own salt into one real Warehouse, and counts what it serves), so that this file
 * tests the protocol's part: who may authenticate as whom, that the failures of an unknown tenant
 * and of a wrong token are indistinguishable, that the operator reads statistics and nothing else,
 * and that nothing a client sends reaches another tenant's store. test/integration/
 * tenants-serve.test.ts does the same through `kvtier serve` and the real TenantView.
 */
import { createHmac, randomBytes as cryptoRandom } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { connect, isKvtierError, PeerServer, Warehouse, type PeerClient } from '../../lib/index.js';
import { tenantStats, type PeerStore } from '../../lib/internal.js';
import { decodeAuth, encodeAuth } from '../../lib/peer/handshake-codec.js';
import { Capability } from '../../lib/peer/protocol.js';
import { randomBytes } from '../helpers.js';
import { rawFrame, RawPeer, type RawFrame } from './raw.js';

const BS = 4096;
const tokens = {
  alice: 'alice-token-0123456789abcdef',
  bob: 'bob-token-0123456789abcdefgh',
  operator: 'operator-token-0123456789abc',
};

interface Counted {
  store: PeerStore;
  calls: { put: number; get: number; lookup: number; evict: number };
}

/** keys -> HMAC(salt, key bytes), truncated to the key's length: the contract's construction. */
function view(wh: Warehouse, salt: Buffer): Counted {
  const map = (keys: string[]): string[] =>
    keys.map((k) =>
      createHmac('sha256', salt)
        .update(Buffer.from(k, 'hex'))
        .digest()
        .subarray(0, k.length / 2)
        .toString('hex'),
    );
  const calls = { put: 0, get: 0, lookup: 0, evict: 0 };
  const store: PeerStore = {
    put: (keys, src) => (calls.put++, wh.put(map(keys), src)),
    get: (keys, dst, o) => (calls.get++, wh.get(map(keys), dst, o)),
    lookup: (keys) => (calls.lookup++, wh.lookup(map(keys))),
    evict: (keys) => (calls.evict++, wh.evict(map(keys))),
  };
  return { store, calls };
}

let wh: Warehouse;
let server: PeerServer;
let plain: PeerServer;
const views: Record<string, Counted> = {};
const logs: { event: string; fields: Record<string, unknown> }[] = [];
let alice: PeerClient;

beforeAll(async () => {
  wh = await Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: 256 * BS }] });
  views.alice = view(wh, cryptoRandom(32));
  views.bob = view(wh, cryptoRandom(32));
  server = PeerServer.start({
    host: '127.0.0.1',
    port: 0,
    warehouse: wh,
    secret: Buffer.from(tokens.operator),
    tenants: {
      tokens: new Map([
        ['alice', Buffer.from(tokens.alice)],
        ['bob', Buffer.from(tokens.bob)],
      ]),
      view: (name) => views[name]!.store,
      stats: () => ({ tenants: [{ name: 'alice', calls: views.alice!.calls }] }),
    },
    log: (event, fields = {}) => logs.push({ event, fields }),
  });
  plain = PeerServer.start({
    host: '127.0.0.1',
    port: 0,
    warehouse: wh,
    secret: Buffer.from(tokens.operator),
  });
  alice = await connect(`127.0.0.1:${server.port}`, { token: tokens.alice, tenant: 'alice' });
});

afterAll(async () => {
  await alice.close();
  await server.close();
  await plain.close();
  await wh.close();
});

const url = (): string => `127.0.0.1:${server.port}`;

async function refusal(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (e) {
    if (isKvtierError(e)) return { code: e.code, message: e.message };
    throw e;
  }
  throw new Error('expected a refusal');
}

describe('a tenant connection', () => {
  it("is served from its tenant's store: what alice stores, bob cannot find by the same keys", async () => {
    const keys = Array.from({ length: 8 }, () => cryptoRandom(32).toString('hex'));
    const data = randomBytes(keys.length * BS);
    const put = await alice.put(keys, data);
    expect(put.stored).toBe(keys.length);
    const back = Buffer.alloc(data.length);
    expect((await alice.get(keys, back)).count).toBe(keys.length);
    expect(back.equals(data)).toBe(true);
    // The keys as sent are nowhere in the warehouse: only alice's mapped keys are.
    expect(wh.lookup(keys).prefix).toBe(0);

    const bob = await connect(url(), { token: tokens.bob, tenant: 'bob' });
    try {
      const bobGetsBefore = views.bob!.calls.get;
      expect((await bob.lookup(keys)).present).toEqual(keys.map(() => false));
      expect((await bob.get(keys, Buffer.alloc(data.length))).count).toBe(0);
      expect((await bob.delete(keys)).removed).toBe(0);
      expect(views.bob!.calls.get).toBe(bobGetsBefore + 1);
      // Alice's blocks are all still there, with their bytes.
      const again = Buffer.alloc(data.length);
      expect((await alice.get(keys, again)).count).toBe(keys.length);
      expect(again.equals(data)).toBe(true);
    } finally {
      await bob.close();
    }
  });

  it('puts of large blocks (two steps, without reserved slots) go to the tenant store too', async () => {
    const big = await Warehouse.open({
      blockBytes: 1 << 20,
      tiers: [{ kind: 'host', bytes: 8 << 20 }],
    });
    const v = view(big, cryptoRandom(32));
    const s = PeerServer.start({
      host: '127.0.0.1',
      port: 0,
      warehouse: big,
      secret: Buffer.from(tokens.operator),
      tenants: {
        tokens: new Map([['alice', Buffer.from(tokens.alice)]]),
        view: () => v.store,
        stats: () => ({ tenants: [] }),
      },
    });
    const c = await connect(`127.0.0.1:${s.port}`, { token: tokens.alice, tenant: 'alice' });
    try {
      const keys = Array.from({ length: 3 }, () => cryptoRandom(32).toString('hex'));
      const data = randomBytes(3 << 20);
      expect((await c.put(keys, data)).stored).toBe(3);
      expect(s.putBlocks).toEqual({ landed: 0, placed: 0, copied: 3 });
      expect(v.calls.put).toBe(1);
      const back = Buffer.alloc(data.length);
      expect((await c.get(keys, back)).count).toBe(3);
      expect(back.equals(data)).toBe(true);
      expect(big.lookup(keys).prefix).toBe(0);
    } finally {
      await c.close();
      await s.close();
      await big.close();
    }
  });
});

describe('authentication bound to tenants', () => {
  it("refuses bob's token under alice's name, and an unknown tenant, with the same error", async () => {
    const before = logs.filter((l) => l.event === 'auth_failed').length;
    const wrong = await refusal(connect(url(), { token: tokens.bob, tenant: 'alice' }));
    const unknown = await refusal(connect(url(), { token: tokens.bob, tenant: 'carol' }));
    const operatorAsTenant = await refusal(
      connect(url(), { token: tokens.operator, tenant: 'alice' }),
    );
    for (const r of [wrong, unknown, operatorAsTenant]) {
      expect(r.code).toBe('KVTIER_AUTH');
      expect(r.message).toBe(`${url()}: authentication failed`);
    }
    expect(logs.filter((l) => l.event === 'auth_failed').length).toBe(before + 3);
    expect(server.errorsSent().auth).toBeGreaterThanOrEqual(3);
  });

  it("a tenant's token without its name is not the operator's", async () => {
    const r = await refusal(connect(url(), { token: tokens.alice }));
    expect(r.code).toBe('KVTIER_AUTH');
  });

  it('the proofs cover the name: a proof without it fails under a tenant name', async () => {
    const raw = await RawPeer.open(server.port);
    try {
      const answer = await rawAuth(raw, tokens.alice, 'alice', false);
      expect(answer?.type).toBe(0x05);
      expect(answer!.meta.readUInt32LE(0)).toBe(2); // ErrorKind.AUTH
    } finally {
      raw.close();
    }
    const ok = await RawPeer.open(server.port);
    try {
      expect((await rawAuth(ok, tokens.alice, 'alice', true))?.type).toBe(0x04);
    } finally {
      ok.close();
    }
  });

  it('announces TENANTS, and neither LANDS nor DURABLE, with tenants', async () => {
    const raw = await RawPeer.open(server.port);
    try {
      const ch = await hello(raw);
      const caps = ch.meta.readUInt32LE(4);
      expect(caps & Capability.TENANTS).toBe(Capability.TENANTS);
      expect(caps & (Capability.LANDS | Capability.DURABLE)).toBe(0);
    } finally {
      raw.close();
    }
  });

  it('a name over 64 bytes is a protocol error', async () => {
    const raw = await RawPeer.open(server.port);
    try {
      await hello(raw);
      const auth = Buffer.alloc(40 + 65);
      auth.writeUInt8(65, 36);
      raw.send(rawFrame(0x03, 0, auth));
      const f = await raw.next();
      expect(f?.type).toBe(0x05);
      expect(f!.meta.readUInt32LE(0)).toBe(1); // ErrorKind.PROTOCOL
    } finally {
      raw.close();
    }
  });

  it('a client naming a tenant to a server without tenants is refused before it proves anything', async () => {
    const r = await refusal(
      connect(`127.0.0.1:${plain.port}`, { token: tokens.operator, tenant: 'alice' }),
    );
    expect(r.code).toBe('KVTIER_AUTH');
    expect(r.message).toMatch(/serves no tenants/);
  });

  it('a server without tenants answers a named tenant with AUTH, even with its own secret', async () => {
    const raw = await RawPeer.open(plain.port);
    try {
      const f = await rawAuth(raw, tokens.operator, 'alice', true);
      expect(f?.type).toBe(0x05);
      expect(f!.meta.readUInt32LE(0)).toBe(2); // ErrorKind.AUTH
    } finally {
      raw.close();
    }
  });

  it('refuses a tenant name that is not one', async () => {
    const r = await refusal(connect(url(), { token: tokens.alice, tenant: 'no/slash' }));
    expect(r.code).toBe('KVTIER_BAD_ARGUMENT');
  });
});

describe("AUTH's tenant field", () => {
  it('round-trips, is exactly 40 bytes without a tenant, and refuses a bad length', () => {
    const proof = cryptoRandom(32);
    const plainAuth = encodeAuth({ proof, transport: 0 });
    expect(plainAuth.length).toBe(40);
    expect(decodeAuth(plainAuth).tenant).toBeUndefined();
    const named = encodeAuth({ proof, transport: 1, tenant: 'acme.prod-1' });
    expect(named.length).toBe(40 + 11);
    expect(named[36]).toBe(11);
    const back = decodeAuth(named);
    expect(back).toMatchObject({ transport: 1, tenant: 'acme.prod-1' });
    expect(Buffer.from(back.proof).equals(proof)).toBe(true);
    // The length byte and the frame disagree: a protocol error, not a shorter name.
    expect(() => decodeAuth(named.subarray(0, 45))).toThrow(/AUTH/);
    expect(() => encodeAuth({ proof, transport: 0, tenant: 'x'.repeat(65) })).toThrow();
    expect(() => encodeAuth({ proof, transport: 0, tenant: '' })).toThrow();
  });
});

describe('the operator', () => {
  it('reads the statistics of every tenant', async () => {
    const stats = (await tenantStats(url(), { token: tokens.operator })) as {
      tenants: { name: string; calls: Counted['calls'] }[];
    };
    expect(stats.tenants.map((t) => t.name)).toEqual(['alice']);
    expect(stats.tenants[0]!.calls.put).toBe(views.alice!.calls.put);
  });

  it("may not put, get, look up or delete: KVTIER_AUTH, and no tenant's store is called", async () => {
    const op = await connect(url(), { token: tokens.operator });
    const before = JSON.stringify(views);
    try {
      const keys = [cryptoRandom(32).toString('hex')];
      const tries = await Promise.all([
        refusal(op.put(keys, randomBytes(BS))),
        refusal(op.get(keys, Buffer.alloc(BS))),
        refusal(op.lookup(keys)),
        refusal(op.delete(keys)),
      ]);
      expect(tries.map((t) => t.code)).toEqual(Array(4).fill('KVTIER_AUTH'));
      expect(JSON.stringify(views)).toBe(before);
    } finally {
      await op.close();
    }
  });

  it("a tenant's token may not ask for STATS; a server without tenants answers none", async () => {
    const raw = await RawPeer.open(server.port);
    try {
      expect((await rawAuth(raw, tokens.alice, 'alice', true))?.type).toBe(0x04);
      raw.send(rawFrame(0x23, 7, Buffer.alloc(0)));
      const f = await raw.next();
      expect(f?.type).toBe(0x05);
      expect(f!.requestId).toBe(7);
      expect(f!.meta.readUInt32LE(0)).toBe(2); // ErrorKind.AUTH
    } finally {
      raw.close();
    }
    const none = await refusal(tenantStats(`127.0.0.1:${plain.port}`, { token: tokens.operator }));
    expect(none.code).toBe('KVTIER_NOT_AVAILABLE');
    const wrong = await refusal(tenantStats(url(), { token: tokens.bob }));
    expect(wrong.code).toBe('KVTIER_AUTH');
  });
});

/** HELLO, and the CHALLENGE it is answered with. */
async function hello(raw: RawPeer): Promise<RawFrame & { nonce: Buffer; clientNonce: Buffer }> {
  const clientNonce = cryptoRandom(32);
  const h = Buffer.alloc(48);
  h.writeUInt16LE(1, 0);
  h.writeUInt32LE(1, 4);
  clientNonce.copy(h, 16);
  raw.send(rawFrame(0x01, 0, h));
  const ch = await raw.next();
  if (!ch || ch.type !== 0x02) throw new Error('expected CHALLENGE');
  return { ...ch, nonce: Buffer.from(ch.meta.subarray(32, 64)), clientNonce };
}

/** A handshake naming `tenant`, its proof computed with the name (as specified) or without. */
async function rawAuth(
  raw: RawPeer,
  secret: string,
  tenant: string,
  withName: boolean,
): Promise<RawFrame | undefined> {
  const ch = await hello(raw);
  const mac = createHmac('sha256', secret)
    .update('kvtier v1 client')
    .update(ch.nonce)
    .update(ch.clientNonce);
  if (withName) mac.update(tenant, 'latin1');
  const auth = Buffer.alloc(40 + tenant.length);
  mac.digest().copy(auth, 0);
  auth.writeUInt8(tenant.length, 36);
  auth.write(tenant, 40, 'latin1');
  raw.send(rawFrame(0x03, 0, auth));
  return raw.next();
}
