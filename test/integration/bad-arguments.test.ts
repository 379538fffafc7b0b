/**
 * Throws arbitrary values at every public function and option: each failure must be a KvtierError
 * with a documented code (never a bare TypeError), and the store must still return the right
 * bytes afterwards.
 */
import { join } from 'node:path';
import { inspect } from 'node:util';

import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  appendGather,
  appendScatter,
  BlockIndex,
  chainKeys,
  ClusterNode,
  ClusterView,
  TenantView,
  connect,
  connectCluster,
  createCopyEngine,
  createGpuFileEngine,
  DeviceRegion,
  gatherBlocks,
  kvBlockBytes,
  PeerPool,
  PeerServer,
  planKvCopy,
  RedisIndex,
  scatterBlocks,
  createEngine,
  describeKvLayout,
  ErrorCodes,
  KeyChain,
  KvFile,
  KvtierError,
  namespaceRoot,
  openFile,
  Region,
  toKey,
  TransferBatch,
  Warehouse,
  type IoEngine,
  type KvLayout,
  type PeerClient,
} from '../../lib/index.js';
import { blocksFor } from '../blocks.js';
import { tempDir } from '../helpers.js';

const BS = 4096;
const KNOWN = 8;
const RUNS = Number(process.env.KVTIER_FUZZ_RUNS ?? 200);

const dir = tempDir('kvtier-badarg-');
let wh: Warehouse;
let engine: IoEngine;
let file: KvFile;
let region: Region;
let keys: string[];
let src: Buffer;
let layout: KvLayout;
let server: PeerServer;
let client: PeerClient;
const secret = Buffer.from('bad-arguments-secret-0123456789abcdef');
const shape = { numLayers: 2, numBlocks: 4, blockTokens: 4, kvHeads: 2, headDim: 8 } as const;

beforeAll(async () => {
  wh = await Warehouse.open({
    blockBytes: BS,
    tiers: [
      { kind: 'host', bytes: 4 * BS },
      { kind: 'file', dir: join(dir.path, 'wh'), bytes: 256 * BS },
    ],
  });
  keys = chainKeys(
    Uint32Array.from({ length: KNOWN * 4 }, (_, i) => i),
    {
      blockTokens: 4,
      namespace: 'bad-arguments',
    },
  ).keys();
  src = blocksFor(keys, BS);
  expect(await wh.put(keys, src)).toMatchObject({ stored: KNOWN });
  engine = createEngine({ kind: 'threads', queueDepth: 4 });
  file = await openFile(join(dir.path, 'scratch'), { create: true, direct: 'auto', size: 4 * BS });
  region = Region.allocate(4 * BS, { pin: false });
  // The warehouse serves too: hostile peer requests land on the same store.
  server = PeerServer.start({ host: '127.0.0.1', port: 0, warehouse: wh, secret });
  client = await connect(`127.0.0.1:${server.port}`, { token: secret });
  layout = describeKvLayout({
    ...shape,
    dtype: 'fp16',
    form: 'kv-first',
    layers: [{ offset: 0 }, { offset: 4096 }],
  });
});

afterAll(async () => {
  await client?.close();
  await server?.close();
  await wh?.close();
  await engine?.close();
  await file?.close();
  await region?.close();
  dir.remove();
});

function throwingProxy(target: object): object {
  const trap = (): never => {
    throw new Error('hostile trap');
  };
  return new Proxy(target, {
    get: trap,
    has: trap,
    ownKeys: trap,
    getPrototypeOf: trap,
    getOwnPropertyDescriptor: trap,
  });
}

function revokedProxy(): object {
  const { proxy, revoke } = Proxy.revocable({}, {});
  revoke();
  return proxy;
}

/**
 * Stands for a proxy, which the property makes only when it runs: fast-check itself inspects the
 * values it generates, and a hostile proxy would throw at fast-check.
 */
class ProxyOf {
  constructor(
    readonly what: string,
    readonly make: () => object,
  ) {}
  toString(): string {
    return `proxy (${this.what})`;
  }
}

/** An object shaped like a KvFile that is not one. */
const fakeFile = { path: '/tmp/x', native: {}, inFlight: {}, assertOpen() {} };

/** Shapes every case meets at least once: the ones that used to escape as TypeErrors. */
const TARGETED: unknown[] = [
  null,
  undefined,
  NaN,
  -1,
  -0,
  0.5,
  2 ** 53,
  -(2 ** 53),
  1e300,
  Infinity,
  -Infinity,
  Symbol('hostile'),
  10n,
  -1n,
  '',
  'x',
  '0'.repeat(64),
  true,
  false,
  {},
  [],
  [null],
  [Symbol('k')],
  new Array(3), // sparse: three holes
  () => 1,
  new Uint8Array(3),
  new ArrayBuffer(2),
  new Date(0),
  Object.create(null),
  fakeFile,
];

/** Proxies and getters that throw, made fresh for each call. */
const PROXIES: ProxyOf[] = [
  new ProxyOf('throwing object', () => throwingProxy({})),
  new ProxyOf('throwing array', () => throwingProxy([])),
  new ProxyOf('revoked', revokedProxy),
  // Spreading it shows no fields; reading one throws.
  new ProxyOf(
    'throwing on get',
    () =>
      new Proxy(
        {},
        {
          get: () => {
            throw new Error('hostile getter');
          },
        },
      ),
  ),
  new ProxyOf('object with a throwing getter', () => ({
    get x(): never {
      throw new Error('hostile getter');
    },
  })),
];

/**
 * Anything, including the shapes that used to escape as TypeErrors. Numbers in (1 MiB, 2^53] are
 * left out: valid as sizes, they would only allocate memory.
 */
const hostile: fc.Arbitrary<unknown> = fc
  .oneof(
    { arbitrary: fc.constantFrom(...TARGETED), weight: 3 },
    {
      arbitrary: fc.anything({
        withBigInt: true,
        withNullPrototype: true,
        withTypedArray: true,
        withSparseArray: true,
        withBoxedValues: true,
        withDate: true,
        withMap: true,
        withSet: true,
      }),
      weight: 3,
    },
    { arbitrary: fc.constantFrom(...PROXIES), weight: 2 },
  )
  .filter((v) => !(typeof v === 'number' && v > 2 ** 20 && v <= 2 ** 53));

/** Closes whatever a call that happened to succeed opened. */
async function dispose(v: unknown): Promise<void> {
  if (v instanceof Warehouse || v instanceof KvFile || v instanceof Region) await v.close();
  else if (v && typeof v === 'object' && 'close' in v && typeof v.close === 'function') {
    await (v as { close(): unknown }).close();
  }
}

type Case = (v: unknown) => unknown;
const any = (v: unknown): never => v as never;

/** A warehouse with tenants, opened on first use (issue 18). */
let tenanted: Promise<Warehouse> | undefined;
const tenantOf = async (): Promise<TenantView> => {
  tenanted ??= Warehouse.open({
    blockBytes: BS,
    tiers: [{ kind: 'host', bytes: 8 * BS }],
    tenancy: {
      blockTokens: 4,
      retentionClasses: { short: 60_000 },
      tenants: [{ name: 't', quota: { host: { share: 0.5 } }, retention: 'short' }],
    },
  });
  return (await tenanted).tenant('t');
};
afterAll(async () => (await tenanted)?.close());

function cases(): Record<string, Case> {
  const dst = (): Region => region;
  const some = (): string[] => keys.slice(0, 2);
  const tenancy = (t: unknown): Promise<Warehouse> =>
    Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: 4 * BS }], tenancy: any(t) });
  return {
    'Warehouse.open({tenancy: v})': (v) => tenancy(v),
    'Warehouse.open({tenancy: {tenants: [v]}})': (v) => tenancy({ blockTokens: 4, tenants: [v] }),
    'Warehouse.open({tenancy: {blockTokens, retentionClasses, secret, now: v}})': (v) =>
      tenancy({
        tenants: [{ name: 'a', retention: 'x' }],
        blockTokens: 4,
        retentionClasses: { x: 1000 },
        ...pick(v, ['blockTokens', 'retentionClasses', 'secret', 'now']),
      }),
    'Warehouse.open({tenancy: {tenants: [{quota, retention, ...: v}]}})': (v) =>
      tenancy({
        blockTokens: 4,
        tenants: [{ name: 'a', ...pick(v, ['quota', 'retention', 'minPrefixTokens', 'priority']) }],
      }),
    'tenant(v)': (v) => wh.tenant(any(v)),
    'tenant.put(v, src)': async (v) => (await tenantOf()).put(any(v), src),
    'tenant.put(keys, src, v)': async (v) => (await tenantOf()).put(some(), src, any(v)),
    'tenant.get(v, dst)': async (v) => (await tenantOf()).get(any(v), dst()),
    'tenant.lookup(v)': async (v) => (await tenantOf()).lookup(any(v)),
    'tenant.pin(keys, v)': async (v) => (await tenantOf()).pin(some(), any(v)),
    'tenant.unpin(v)': async (v) => (await tenantOf()).unpin(any(v)),
    'tenant.evict(v)': async (v) => (await tenantOf()).evict(any(v)),
    'Warehouse.open(v)': (v) => Warehouse.open(any(v)),
    'Warehouse.open({blockBytes: v})': (v) =>
      Warehouse.open({ blockBytes: any(v), tiers: [{ kind: 'host', bytes: 4 * BS }] }),
    'Warehouse.open({tiers: v})': (v) => Warehouse.open({ blockBytes: BS, tiers: any(v) }),
    'Warehouse.open({tiers: [v]})': (v) => Warehouse.open({ blockBytes: BS, tiers: [any(v)] }),
    'Warehouse.open({tiers: [{bytes: v}]})': (v) =>
      Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: any(v) }] }),
    'Warehouse.open({tiers: [{dir: v}]})': (v) =>
      Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'file', dir: inTemp(v), bytes: 4 * BS }] }),
    'Warehouse.open({now, policy, ...: v})': (v) =>
      Warehouse.open({
        blockBytes: BS,
        tiers: [{ kind: 'host', bytes: 4 * BS }],
        ...pick(v, [
          'now',
          'policy',
          'durability',
          'writeThrough',
          'promote',
          'engine',
          'prefetchBytes',
        ]),
      }),
    'put(v, src)': (v) => wh.put(any(v), src),
    'put(keys, v)': (v) => wh.put(some(), any(v)),
    'put(keys, src, v)': (v) => wh.put(some(), src, any(v)),
    'put(keys, src, {priority, writeThrough: v})': (v) =>
      wh.put(some(), src, pick(v, ['priority', 'writeThrough'])),
    'get(v, dst)': (v) => wh.get(any(v), dst()),
    'get(keys, v)': (v) => wh.get(some(), any(v)),
    'get(keys, dst, v)': (v) => wh.get(some(), dst(), any(v)),
    'get(keys, dst, {signal, promote, remote: v})': (v) =>
      wh.get(some(), dst(), pick(v, ['signal', 'promote', 'remote'])),
    'lookup(v)': (v) => wh.lookup(any(v)),
    'prefetch(v)': (v) => wh.prefetch(any(v)),
    'prefetch(keys, v)': (v) => wh.prefetch(some(), any(v)),
    'prefetch(keys, {to, priority, signal, deadline: v})': (v) =>
      wh.prefetch(some(), pick(v, ['to', 'priority', 'signal', 'deadline'])),
    'pin(v)': (v) => wh.pin(any(v), { ttlMs: 1000 }),
    'pin(keys, v)': (v) => wh.pin(some(), any(v)),
    'pin(keys, {ttlMs: v})': (v) => wh.pin(some(), { ttlMs: any(v) }),
    'unpin(v)': (v) => wh.unpin(any(v)),
    'evict(v)': (v) => wh.evict(any(v)),
    'watch(v)': (v) => wh.watch(any(v)),
    'createEngine(v)': (v) => createEngine(any(v)),
    'createEngine({kind, queueDepth, threads: v})': (v) =>
      createEngine(pick(v, ['kind', 'queueDepth', 'threads'])),
    'engine.submit(v)': (v) => engine.submit(any(v)),
    'engine.submit(batch, v)': (v) => engine.submit(new TransferBatch(), any(v)),
    'engine.read(v, ...)': (v) => engine.read(any(v), 0, region),
    'engine.write(file, v, ...)': (v) => engine.write(file, any(v), new Uint8Array(BS)),
    'engine.sync(v)': (v) => engine.sync(any(v)),
    'batch.read(v, ...)': (v) => new TransferBatch().read(any(v), 0, region),
    'batch.read(file, v, ...)': (v) =>
      engine.submit(new TransferBatch().read(file, any(v), region)),
    'batch.read(file, 0, v)': (v) => new TransferBatch().read(file, 0, any(v)),
    'batch.read(file, 0, target, v, v)': (v) =>
      engine.submit(new TransferBatch().read(file, 0, region, any(v), any(v))),
    'batch.read(file, 0, target, 0, BS, v)': (v) =>
      new TransferBatch().read(file, 0, region, 0, BS, any(v)),
    'batch.write(file, 0, v)': (v) => new TransferBatch().write(file, 0, any(v)),
    'batch.copy(v, ...)': (v) => new TransferBatch().copy(any(v), 0, region, 0, 16),
    'batch.copy(target, 0, source, 0, v)': (v) =>
      engine.submit(new TransferBatch().copy(region, 0, new Uint8Array(64), 0, any(v))),
    'batch.checksum(target, v, v)': (v) =>
      engine.submit(new TransferBatch().checksum(region, any(v), any(v))),
    'batch.sync(v)': (v) => new TransferBatch().sync(any(v)),
    'openFile(v)': (v) => openFile(any(v)),
    'openFile(path, v)': (v) => openFile(join(dir.path, 'opened'), any(v)),
    'openFile(path, {create, truncate, readOnly, direct, size: v})': (v) =>
      openFile(join(dir.path, 'opened'), {
        create: true,
        ...pick(v, ['create', 'truncate', 'readOnly', 'direct', 'size']),
      }),
    'chainKeys(v, options)': (v) => chainKeys(any(v), { blockTokens: 4 }),
    'chainKeys(tokens, v)': (v) => chainKeys([1, 2, 3, 4], any(v)),
    'chainKeys(tokens, {blockTokens, namespace, parent: v})': (v) =>
      chainKeys([1, 2, 3, 4], {
        blockTokens: 4,
        ...pick(v, ['blockTokens', 'namespace', 'parent']),
      }),
    'namespaceRoot(v)': (v) => namespaceRoot(any(v)),
    'toKey(v)': (v) => toKey(any(v)),
    'new KeyChain(v)': (v) => new KeyChain(any(v)),
    'Region.allocate(v)': (v) => Region.allocate(any(v)),
    'Region.allocate(n, v)': (v) => Region.allocate(BS, any(v)),
    'region.view(v, v)': (v) => region.view(any(v), any(v)),
    'region.view(0, v)': (v) => region.view(0, any(v)),
    'connect(v)': (v) => connect(any(v), { token: 'x'.repeat(32) }),
    'connect(url, v)': (v) => connect('127.0.0.1:1', any(v)),
    'connect(url, {token, tokenFile, transport, timeoutMs, ...: v})': (v) =>
      connect('127.0.0.1:1', {
        token: 'x'.repeat(32),
        ...pick(v, [
          'token',
          'tokenFile',
          'transport',
          'timeoutMs',
          'connectTimeoutMs',
          'reconnect',
          'blockBytes',
        ]),
      }),
    'client.put(v, src)': (v) => client.put(any(v), src),
    'client.put(keys, v)': (v) => client.put(keys.slice(0, 2), any(v)),
    'client.get(v, dst)': (v) => client.get(any(v), dst()),
    'client.get(keys, v)': (v) => client.get(keys.slice(0, 2), any(v)),
    'client.lookup(v)': (v) => client.lookup(any(v)),
    'client.delete(v)': (v) => client.delete(any(v)),
    'describeKvLayout(v)': (v) => describeKvLayout(any(v)),
    'kvBlockBytes(v)': (v) => kvBlockBytes(any(v)),
    'planKvCopy(v)': (v) => planKvCopy(any(v)),
    'planKvCopy(layout, v)': (v) => planKvCopy(layout, any(v)),
    'appendGather(v, layout, pool, blocks, packed)': (v) =>
      appendGather(any(v), layout, new Uint8Array(8192), [0], new Uint8Array(BS)),
    'appendGather(batch, v, pool, blocks, packed)': (v) =>
      appendGather(new TransferBatch(), any(v), new Uint8Array(8192), [0], new Uint8Array(BS)),
    'appendScatter(batch, layout, v, v, v)': (v) =>
      appendScatter(new TransferBatch(), layout, any(v), any(v), any(v)),
    'appendScatter(batch, layout, pool, [v], packed, v)': (v) =>
      appendScatter(
        new TransferBatch(),
        layout,
        new Uint8Array(8192),
        [any(v)],
        new Uint8Array(BS),
        any(v),
      ),
    'gatherBlocks(v, pool, layout, blocks, packed)': (v) =>
      gatherBlocks(any(v), new Uint8Array(8192), layout, [0], new Uint8Array(BS)),
    'gatherBlocks(engine, pool, layout, blocks, packed, {packing, packedOffset, signal: v})': (v) =>
      gatherBlocks(
        engine,
        new Uint8Array(8192),
        layout,
        [1],
        new Uint8Array(2 * BS),
        pick(v, ['packing', 'packedOffset', 'signal']),
      ),
    'scatterBlocks(engine, v, layout, v, v)': (v) =>
      scatterBlocks(engine, any(v), layout, any(v), any(v)),
    'createCopyEngine(v)': (v) => createCopyEngine(any(v)),
    'createGpuFileEngine(v)': (v) => createGpuFileEngine(any(v)),
    'DeviceRegion.allocate(v, v)': (v) => DeviceRegion.allocate(any(v), any(v)),
    'DeviceRegion.wrap(v, v, v)': (v) => DeviceRegion.wrap(any(v), any(v), any(v)),
    'DeviceRegion.import(v, v)': (v) => DeviceRegion.import(any(v), any(v)),
    'PeerServer.start(v)': (v) => PeerServer.start(any(v)),
    'new PeerPool(v)': (v) => new PeerPool(any(v)),
    'RedisIndex.open(v, v)': (v) => RedisIndex.open(any(v), any(v)),
    'connectCluster(v, v)': (v) => connectCluster(any(v), any(v)),
    'ClusterNode.join(v, v)': (v) => ClusterNode.join(any(v), any(v)),
    'ClusterNode.join(wh, {redis, nodeId, advertise, leaseMs: v})': (v) =>
      ClusterNode.join(wh, {
        redis: 'redis://127.0.0.1:1',
        nodeId: 'n1',
        advertise: '127.0.0.1:1',
        ...pick(v, ['redis', 'nodeId', 'advertise', 'leaseMs']),
      }),
    'new ClusterView(v, v)': (v) => new ClusterView(any(v), any(v)),
    'new BlockIndex(v, v)': (v) => new BlockIndex(any(v), any(v)),
    'describeKvLayout({fields: v})': (v) =>
      describeKvLayout({
        numLayers: 2,
        numBlocks: 4,
        blockTokens: 4,
        kvHeads: 2,
        headDim: 8,
        dtype: 'fp16',
        form: 'kv-first',
        layers: [{ offset: 0 }, { offset: 4096 }],
        ...pick(v, [
          'numLayers',
          'numBlocks',
          'blockTokens',
          'kvHeads',
          'headDim',
          'dtype',
          'form',
          'layers',
        ]),
      } as never),
  };
}

/** A string stays inside the test's directory (a file tier creates its directory). */
function inTemp(v: unknown): never {
  return (typeof v === 'string' ? join(dir.path, 'd', v.replace(/\.\./g, '_')) : v) as never;
}

/** The hostile value as one of `fields` (which field depends on the value), or as all of them. */
function pick(v: unknown, fields: readonly string[]): Record<string, never> {
  const out: Record<string, unknown> = {};
  const at = typeof v === 'number' && Number.isFinite(v) ? Math.abs(Math.trunc(v)) : fields.length;
  if (at < fields.length) out[fields[at]!] = v;
  else for (const f of fields) out[f] = v;
  return out as Record<string, never>;
}

const documented = new Set<string>(ErrorCodes);

async function failure(call: () => unknown): Promise<unknown> {
  try {
    await dispose(await call());
    return undefined;
  } catch (e) {
    return e ?? new Error('threw a nullish value');
  }
}

describe('bad arguments at the public boundary', () => {
  for (const [name, call] of Object.entries(cases())) {
    it(`${name}: fails only with a documented KvtierError, storing nothing malformed`, async () => {
      const check = async (given: unknown): Promise<void> => {
        const v = given instanceof ProxyOf ? given.make() : given;
        const e = await failure(() => call(v));
        if (e === undefined) return;
        expect(e, `${name} threw ${inspect(e)}`).toBeInstanceOf(KvtierError);
        expect(documented.has((e as KvtierError).code), (e as KvtierError).code).toBe(true);
        // Failed or not, the call left only well-formed keys in the store.
        expect(wh.keys().filter((k) => typeof k !== 'string' || toKey(k) !== k)).toEqual([]);
      };
      // Every targeted shape once, then whatever fast-check comes up with.
      for (const v of [...TARGETED, ...PROXIES]) await check(v);
      await fc.assert(fc.asyncProperty(hostile, check), { numRuns: RUNS });
    });
  }

  it('the store still returns the right bytes after the hammering', async () => {
    const dst = Buffer.alloc(KNOWN * BS);
    const got = await wh.get(keys, dst);
    expect(got.found).toEqual(keys.map(() => true));
    expect(Buffer.compare(dst, src)).toBe(0);
    expect(wh.lookup(keys).prefix).toBe(KNOWN);
    // Whatever the hammering stored went in under well-formed keys only.
    for (const k of wh.keys())
      expect(typeof k === 'string' && toKey(k) === k, String(k)).toBe(true);
  });
});
