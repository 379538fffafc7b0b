/**
 * The engine channel of `kvtier serve`, end to end against a real server process: host pools
 * shared by descriptor, save, lookup and load with every byte compared, several engines side by
 * side, an engine that disconnects mid-save, a server killed mid-load.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import type { EngineClient, HostPoolFile } from '../../lib/engine-channel/client.js';
import { isKvtierError } from '../../lib/core/errors.js';
import { tempDir, until } from '../helpers.js';
import { killAll } from '../peer/serve-process.js';
import {
  blockBytesOf,
  blockMajor,
  connect,
  keys,
  kvFirst,
  randomPool,
  startEngineServe,
} from './channel-helpers.js';

const dir = tempDir('kvtier-engine-');
const open: { clients: EngineClient[]; pools: HostPoolFile[] } = { clients: [], pools: [] };

afterEach(async () => {
  for (const c of open.clients.splice(0)) c.close();
  await Promise.all(open.pools.splice(0).map((p) => p.close()));
});
afterAll(() => {
  killAll();
  dir.remove();
});

async function client(socket: string, name?: string): Promise<EngineClient> {
  const c = await connect(socket, name);
  open.clients.push(c);
  return c;
}

function pool(bytes: number): HostPoolFile {
  const p = randomPool(bytes);
  open.pools.push(p);
  return p;
}

describe('engine channel: one engine', () => {
  let socket: string;
  beforeAll(async () => {
    ({ socket } = await startEngineServe(dir.path));
  });

  it('hello reports the block size, the batch limit and the server pid', async () => {
    const c = await client(socket);
    expect(c.blockBytes).toBe(512);
    expect(c.maxBatch).toBeGreaterThanOrEqual(1);
    expect(c.serverPid).toBeGreaterThan(0);
    expect(c.serverPid).not.toBe(process.pid);
  });

  for (const [form, make] of [
    ['kv-first (gathered through staging)', kvFirst],
    ['block-major (read in place)', blockMajor],
  ] as const) {
    it(`${form}: save, lookup, load into other block ids, every byte compared`, async () => {
      const c = await client(socket);
      const { spec, bytes } = make(16);
      const p = pool(bytes);
      const reg = await c.registerHostPool(p, spec, 'kv');
      expect(reg).toEqual({ pool: 'kv', numBlocks: 16, blockBytes: 512 });
      const k = keys(4);
      const src = [1, 3, 4, 7];
      const before = (await c.stats()).engine;
      const saved = await c.save('kv', k, src);
      expect(saved.status).toEqual(['stored', 'stored', 'stored', 'stored']);
      expect(saved).toMatchObject({ stored: 4, present: 0, rejected: 0 });
      const again = await c.save('kv', k.slice(0, 2), [1, 3]);
      expect(again.status).toEqual(['present', 'present']);

      const missing = keys(1)[0]!;
      const look = await c.lookup([...k, missing]);
      expect(look).toEqual({ prefix: 4, present: [true, true, true, true, false] });

      const expected = src.map((b) => blockBytesOf(p, spec, b));
      const dst = [12, 10, 11, 15, 0];
      const untouched = blockBytesOf(p, spec, 0);
      const got = await c.load('kv', [...k, missing], dst);
      expect(got).toEqual({ loaded: [true, true, true, true, false], prefix: 4 });
      for (let j = 0; j < 4; j++) {
        expect(blockBytesOf(p, spec, dst[j]!).equals(expected[j]!), `block ${dst[j]}`).toBe(true);
      }
      // A key that missed leaves its engine block as it was.
      expect(blockBytesOf(p, spec, 0).equals(untouched)).toBe(true);
      // Source blocks are read, never written.
      src.forEach((b, j) => expect(blockBytesOf(p, spec, b).equals(expected[j]!)).toBe(true));
      // Each block's bytes took the path meant for this layout: no staging copy.
      const after = (await c.stats()).engine;
      const moved = (name: string): number => after[name]! - before[name]!;
      expect(moved(make === kvFirst ? 'savedIntoSlots' : 'savedInPlace')).toBe(4);
      expect(moved('loadedFromSlots')).toBe(4);
      expect(moved('savedStaged') + moved('loadedStaged')).toBe(0);
    });
  }

  it('pins, unpins, releases and reports statistics', async () => {
    const c = await client(socket);
    const { spec, bytes } = kvFirst(4);
    const p = pool(bytes);
    await c.registerHostPool(p, spec, 'p');
    const k = keys(2);
    await c.save('p', k, [0, 1]);
    const lease = await c.pin(k, 10_000);
    expect(lease.lease).toBeGreaterThan(0);
    await c.unpin(lease.lease);
    const s = await c.stats();
    expect(s.engine.saves).toBeGreaterThanOrEqual(1);
    expect((s.stats as { blockBytes: number }).blockBytes).toBe(512);
    await c.release('p');
    await expect(c.save('p', k, [0, 1])).rejects.toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
    // Released memory may be registered again.
    await c.registerHostPool(p, spec, 'p2');
  });
});

describe('engine channel: several engines side by side', () => {
  it('two connections with their own pools save at once and read each other blocks', async () => {
    const d = tempDir('kvtier-engine-');
    const { socket } = await startEngineServe(d.path, [], 4 << 20);
    const a = await client(socket, 'rank0');
    const b = await client(socket, 'rank1');
    const la = kvFirst(32);
    const lb = blockMajor(32);
    const pa = pool(la.bytes);
    const pb = pool(lb.bytes);
    await a.registerHostPool(pa, la.spec, 'kv');
    await b.registerHostPool(pb, lb.spec, 'kv');
    const ka = keys(16, 'a');
    const kb = keys(16, 'b');
    const ids = Array.from({ length: 16 }, (_, i) => i);
    const [sa, sb] = await Promise.all([a.save('kv', ka, ids), b.save('kv', kb, ids)]);
    expect(sa.stored).toBe(16);
    expect(sb.stored).toBe(16);
    // Each engine loads the other's blocks into its own pool (different layouts, same bytes).
    const free = ids.map((i) => i + 16);
    const [la2, lb2] = await Promise.all([a.load('kv', kb, free), b.load('kv', ka, free)]);
    expect(la2.prefix).toBe(16);
    expect(lb2.prefix).toBe(16);
    for (const i of ids) {
      expect(blockBytesOf(pa, la.spec, 16 + i).equals(blockBytesOf(pb, lb.spec, i))).toBe(true);
      expect(blockBytesOf(pb, lb.spec, 16 + i).equals(blockBytesOf(pa, la.spec, i))).toBe(true);
    }
    d.remove();
  });
});

describe('engine channel: blocks in the file tier', () => {
  it('loads blocks evicted to disk through staging, every byte compared', async () => {
    const d = tempDir('kvtier-engine-');
    const { serve, socket } = await startEngineServe(d.path, [
      '--dir',
      d.path + '/tier',
      '--file-bytes',
      String(1 << 20),
    ]);
    const c = await client(socket);
    const { spec, bytes } = kvFirst(64);
    const p = pool(bytes);
    await c.registerHostPool(p, spec, 'kv');
    // The host tier holds 2048 blocks of 512 bytes: saving more pushes the oldest to the file.
    const k = keys(32);
    const ids = Array.from({ length: 32 }, (_, i) => i);
    for (let r = 0; r < 80; r++) {
      const filler = keys(32, `filler${r}`);
      if (r === 0) expect((await c.save('kv', k, ids)).stored).toBe(32);
      else await c.save('kv', filler, ids);
    }
    const tiers = (await c.stats()).stats as { tiers: { name: string; usedBlocks: number }[] };
    expect(tiers.tiers[1]!.usedBlocks).toBeGreaterThan(0);
    const before = (await c.stats()).engine;
    const dst = ids.map((i) => 32 + i);
    const got = await c.load('kv', k, dst);
    expect(got.loaded.filter(Boolean).length).toBe(got.loaded.length);
    const after = (await c.stats()).engine;
    expect(after.loadedStaged! - before.loadedStaged!).toBeGreaterThan(0);
    // Saved from blocks 0..31 in round 0; the fillers were saved from the same blocks, so the
    // expected bytes are the pool's blocks 0..31 as they were then: unchanged since.
    for (const i of ids) {
      expect(blockBytesOf(p, spec, 32 + i).equals(blockBytesOf(p, spec, i))).toBe(true);
    }
    expect(serve.child.exitCode).toBeNull();
    d.remove();
  });
});

describe('engine channel: failures', () => {
  it('an engine that disconnects mid-save loses its pool, not its saved blocks', async () => {
    const d = tempDir('kvtier-engine-');
    const { serve, socket } = await startEngineServe(d.path, [], 8 << 20);
    const a = await client(socket, 'leaver');
    const { spec, bytes } = kvFirst(64);
    const pa = pool(bytes);
    await a.registerHostPool(pa, spec, 'kv');
    const early = keys(8, 'early');
    await a.save('kv', early, [0, 1, 2, 3, 4, 5, 6, 7]);
    const expected = [0, 1, 2, 3, 4, 5, 6, 7].map((i) => blockBytesOf(pa, spec, i));
    // Saves in flight, then the engine goes away without waiting for them.
    const late = Array.from({ length: 6 }, (_, r) =>
      a.save(
        'kv',
        keys(8, `late${r}`),
        [8, 9, 10, 11, 12, 13, 14, 15].map((i) => i + 8 * r),
      ),
    );
    a.close();
    for (const s of late) await expect(s).rejects.toMatchObject({ code: 'KVTIER_CLOSED' });
    await serve.waitFor('engine-disconnected');
    await until('the pool released', () =>
      serve.logs.some((l) => l.event === 'engine-released' && l.pid === process.pid),
    );

    // The server keeps serving: a new engine loads the blocks saved before, byte for byte.
    const b = await client(socket, 'stayer');
    const lb = kvFirst(8);
    const pb = pool(lb.bytes);
    await b.registerHostPool(pb, lb.spec, 'kv');
    // The leaver's memory is free again: its registration went with its connection.
    await b.registerHostPool(pa, spec, 'leaver-memory');
    const got = await b.load('kv', early, [7, 6, 5, 4, 3, 2, 1, 0]);
    expect(got.prefix).toBe(8);
    for (let j = 0; j < 8; j++) {
      expect(blockBytesOf(pb, lb.spec, 7 - j).equals(expected[j]!)).toBe(true);
    }
    expect(serve.child.exitCode).toBeNull();
    d.remove();
  });

  it('a server SIGKILLed mid-load fails the waiting calls at once with KVTIER_CLOSED', async () => {
    const d = tempDir('kvtier-engine-');
    const { serve, socket } = await startEngineServe(d.path, [], 8 << 20);
    const c = await client(socket);
    const { spec, bytes } = kvFirst(64);
    const p = pool(bytes);
    await c.registerHostPool(p, spec, 'kv');
    const k = keys(32);
    await c.save(
      'kv',
      k,
      Array.from({ length: 32 }, (_, i) => i),
    );
    const expected = Array.from({ length: 32 }, (_, i) => blockBytesOf(p, spec, i));
    const loads = Array.from({ length: 8 }, () =>
      c.load(
        'kv',
        k,
        Array.from({ length: 32 }, (_, i) => 32 + i),
      ),
    );
    serve.child.kill('SIGKILL');
    const outcomes = await Promise.allSettled(loads);
    const failed = outcomes.filter((o) => o.status === 'rejected');
    expect(failed.length).toBeGreaterThan(0);
    for (const o of failed) {
      const e = o.reason as unknown;
      expect(isKvtierError(e, 'KVTIER_CLOSED'), String(e)).toBe(true);
    }
    // A load that did answer before the kill wrote checksummed bytes only.
    if (failed.length < outcomes.length) {
      for (let i = 0; i < 32; i++) {
        const now = blockBytesOf(p, spec, 32 + i);
        expect(now.equals(expected[i]!)).toBe(true);
      }
    }
    await expect(c.lookup(k)).rejects.toMatchObject({ code: 'KVTIER_CLOSED' });
    await serve.exited;
    d.remove();
  });
});
