import { spawn } from 'node:child_process';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { chainKeys, connect, isKvtierError, Region, type PeerClient } from '../../lib/index.js';
import { randomBytes, tempDir } from '../helpers.js';
import { killAll, startServe, TOKEN, writeToken, type ServeProcess } from './serve-process.js';

const BS = 64 * 1024;
const dirs: { remove(): void }[] = [];
let server: ServeProcess;
let tokenFile: string;
let url: string;

function keysFor(n: number, seed: number): string[] {
  const tokens = new Uint32Array(n * 4).map((_, i) => i * 7 + seed * 1_000_003);
  return chainKeys(tokens, { blockTokens: 4, namespace: `peer-${seed}` }).keys();
}

beforeAll(async () => {
  const d = tempDir('kvtier-peer-');
  dirs.push(d);
  tokenFile = writeToken(d.path);
  server = await startServe({
    dir: join(d.path, 'wh'),
    blockBytes: BS,
    hostBytes: 256 * BS,
    fileBytes: 4096 * BS,
    tokenFile,
  });
  url = `kvtier://127.0.0.1:${server.port}`;
});

afterAll(() => {
  killAll();
  dirs.forEach((d) => d.remove());
});

describe('connect() to kvtier serve', () => {
  let client: PeerClient;
  beforeAll(async () => {
    client = await connect(url, { tokenFile });
  });
  afterAll(() => client.close());

  it('reports the server block size, batch limit and transport', () => {
    expect(client.blockBytes).toBe(BS);
    expect(client.maxBatch).toBeGreaterThan(0);
    expect(client.transport).toBe('tcp');
    expect(client.transportReason).toMatch(/tcp/);
  });

  it('puts, looks up, gets and deletes blocks, bytes intact', async () => {
    const keys = keysFor(16, 1);
    const src = randomBytes(16 * BS);
    const put = await client.put(keys, src);
    expect(put).toMatchObject({ stored: 16, present: 0, rejected: 0 });
    expect((await client.put(keys, src)).present).toBe(16);

    const look = await client.lookup([...keys, keysFor(1, 99)[0]!]);
    expect(look.prefix).toBe(16);
    expect(look.present.slice(0, 16).every(Boolean)).toBe(true);
    expect(look.present[16]).toBe(false);

    const region = Region.allocate(16 * BS);
    try {
      const got = await client.get(keys, region);
      expect(got).toMatchObject({ count: 16, prefix: 16 });
      expect(Buffer.from(region.buffer).equals(src)).toBe(true);
    } finally {
      await region.close();
    }

    const removed = await client.delete(keys.slice(0, 4));
    expect(removed.removed).toBe(4);
    const after = await client.lookup(keys);
    expect(after.prefix).toBe(0);
    expect(after.present.filter(Boolean).length).toBe(12);
  });

  it('leaves the bytes of missing blocks untouched and never reports them found', async () => {
    const keys = keysFor(3, 2);
    const src = randomBytes(3 * BS);
    await client.put(
      [keys[0]!, keys[2]!],
      Buffer.concat([src.subarray(0, BS), src.subarray(2 * BS)]),
    );
    const dst = Buffer.alloc(3 * BS, 0xab);
    const got = await client.get(keys, dst);
    expect(got.found).toEqual([true, false, true]);
    expect(got.prefix).toBe(1);
    expect(dst.subarray(0, BS).equals(src.subarray(0, BS))).toBe(true);
    expect(dst.subarray(BS, 2 * BS).every((b) => b === 0xab)).toBe(true);
    expect(dst.subarray(2 * BS).equals(src.subarray(2 * BS))).toBe(true);
  });

  it('gets into a view at an offset of a region', async () => {
    const keys = keysFor(2, 3);
    const src = randomBytes(2 * BS);
    await client.put(keys, src);
    const region = Region.allocate(4 * BS);
    try {
      const view = region.view(BS, 2 * BS);
      expect((await client.get(keys, view)).count).toBe(2);
      expect(Buffer.from(region.buffer, BS, 2 * BS).equals(src)).toBe(true);
      expect(Buffer.from(region.buffer, 0, BS).every((b) => b === 0)).toBe(true);
    } finally {
      await region.close();
    }
  });

  it('splits a batch larger than the server limit and runs many requests at once', async () => {
    const n = client.maxBatch + 5;
    const keys = keysFor(n, 4);
    // Small enough for the tiers: the batch limit is what is being tested.
    const src = randomBytes(n * BS);
    const put = await client.put(keys, src);
    expect(put.stored + put.present + put.rejected).toBe(n);
    const parallel = await Promise.all(
      [0, 1, 2, 3].map(async (k) => {
        const part = keys.slice(k * 8, k * 8 + 8);
        const dst = Buffer.alloc(8 * BS);
        const got = await client.get(part, dst);
        return got.found.every((f, i) =>
          f
            ? dst
                .subarray(i * BS, (i + 1) * BS)
                .equals(src.subarray((k * 8 + i) * BS, (k * 8 + i + 1) * BS))
            : true,
        );
      }),
    );
    expect(parallel).toEqual([true, true, true, true]);
  });

  it('sends the puts and gets of many callers in one turn together, each with its own bytes', async () => {
    // Twelve callers, one or two blocks each, into and out of different memory (buffers, views
    // at odd block indexes, a Region): they leave as a few requests, and each caller gets exactly
    // its own statuses and bytes.
    const region = Region.allocate(24 * BS);
    try {
      const callers = Array.from({ length: 12 }, (_, k) => ({
        keys: keysFor(1 + (k % 2), 40 + k),
        src: randomBytes((1 + (k % 2)) * BS),
      }));
      const puts = await Promise.all(callers.map((c) => client.put(c.keys, c.src)));
      puts.forEach((r, k) => expect(r.stored).toBe(callers[k]!.keys.length));
      // A key nobody stored, and a caller whose destination is too small, among the others.
      const missing = keysFor(1, 99);
      const bad = client.get(keysFor(2, 40), Buffer.alloc(BS)).then(
        () => undefined,
        (e: unknown) => e,
      );
      const plain = callers.map((c) => Buffer.alloc(c.src.length));
      const viewBacking = Buffer.alloc(40 * BS);
      const views = callers.map((c, k) => viewBacking.subarray(k * 3 * BS, k * 3 * BS + 2 * BS));
      const gets = await Promise.all([
        ...callers.map((c, k) => client.get(c.keys, plain[k]!)),
        ...callers.map((c, k) =>
          client.getAt(c.keys, views[k]!, c.keys.length === 1 ? [1] : [1, 0]),
        ),
        ...callers.map((c, k) => client.get(c.keys, region.view(2 * k * BS, c.src.length))),
        client.get(missing, Buffer.alloc(BS)),
      ]);
      expect(await bad).toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
      callers.forEach((c, k) => {
        const n = c.keys.length;
        expect(gets[k]!.count).toBe(n);
        expect(plain[k]!.equals(c.src)).toBe(true);
        expect(gets[12 + k]!.count).toBe(n);
        const v = views[k]!;
        if (n === 1) expect(v.subarray(BS, 2 * BS).equals(c.src)).toBe(true);
        else
          expect(Buffer.concat([v.subarray(BS, 2 * BS), v.subarray(0, BS)]).equals(c.src)).toBe(
            true,
          );
        expect(gets[24 + k]!.count).toBe(n);
        expect(Buffer.from(region.view(2 * k * BS, n * BS)).equals(c.src)).toBe(true);
      });
      expect(gets[36]!.found).toEqual([false]);
    } finally {
      await region.close();
    }
  });

  it('refuses a destination too small for the batch, before sending anything', async () => {
    const keys = keysFor(4, 5);
    await expect(client.get(keys, Buffer.alloc(3 * BS))).rejects.toMatchObject({
      code: 'KVTIER_BAD_ARGUMENT',
    });
    await expect(client.put(keys, Buffer.alloc(BS))).rejects.toMatchObject({
      code: 'KVTIER_BAD_ARGUMENT',
    });
    // The connection is still good.
    expect((await client.lookup(keys)).prefix).toBe(0);
  });

  it('serves several connections at once', async () => {
    const others = await Promise.all([0, 1, 2].map(() => connect(url, { token: TOKEN })));
    try {
      const results = await Promise.all(
        others.map(async (c, k) => {
          const keys = keysFor(4, 10 + k);
          const src = randomBytes(4 * BS);
          await c.put(keys, src);
          const dst = Buffer.alloc(4 * BS);
          await others[(k + 1) % others.length]!.get(keys, dst).catch(() => undefined);
          const own = Buffer.alloc(4 * BS);
          await c.get(keys, own);
          return own.equals(src);
        }),
      );
      expect(results).toEqual([true, true, true]);
    } finally {
      await Promise.all(others.map((c) => c.close()));
    }
  });
});

describe('two processes share blocks through kvtier serve', () => {
  it('a block put by this process is read by another one, byte for byte', async () => {
    const keys = keysFor(8, 20);
    const src = randomBytes(8 * BS);
    const writer = await connect(url, { tokenFile });
    try {
      expect((await writer.put(keys, src)).stored).toBe(8);
    } finally {
      await writer.close();
    }
    const script = `
      import { connect } from ${JSON.stringify(new URL('../../dist/index.js', import.meta.url).href)};
      import { createHash } from 'node:crypto';
      const c = await connect(process.argv[1], { tokenFile: process.argv[2] });
      const keys = JSON.parse(process.argv[3]);
      const dst = Buffer.alloc(keys.length * c.blockBytes);
      const r = await c.get(keys, dst);
      await c.close();
      process.stdout.write(JSON.stringify({ count: r.count, sha: createHash('sha256').update(dst).digest('hex') }));
    `;
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        ['--input-type=module', '-e', script, url, tokenFile, JSON.stringify(keys)],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('exit', (code) => (code === 0 ? resolve(stdout) : reject(new Error(stderr))));
    });
    const { createHash } = await import('node:crypto');
    expect(JSON.parse(out)).toEqual({
      count: 8,
      sha: createHash('sha256').update(src).digest('hex'),
    });
  });
});

describe('connect() refuses', () => {
  it('a missing secret, a short secret and a bad address', async () => {
    await expect(connect(url)).rejects.toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
    await expect(connect(url, { token: 'short' })).rejects.toMatchObject({
      code: 'KVTIER_BAD_ARGUMENT',
    });
    await expect(connect('nonsense', { token: TOKEN })).rejects.toMatchObject({
      code: 'KVTIER_BAD_ARGUMENT',
    });
  });

  it('a port nobody listens on, with KVTIER_PEER', async () => {
    const e = await connect('127.0.0.1:1', { token: TOKEN }).catch((x: unknown) => x);
    expect(isKvtierError(e, 'KVTIER_PEER'), String(e)).toBe(true);
  });

  it('an explicit verbs transport on a machine without RDMA, with KVTIER_NOT_AVAILABLE', async () => {
    await expect(connect(url, { token: TOKEN, transport: 'verbs' })).rejects.toMatchObject({
      code: 'KVTIER_NOT_AVAILABLE',
    });
  });
});
