/**
 * Peers failing under load: killed mid-transfer, stalled, restarted. Every outcome is checked by
 * error code and by bytes, never by timing.
 */
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { chainKeys, connect, isKvtierError, Warehouse } from '../../lib/index.js';
import { randomBytes, tempDir } from '../helpers.js';
import { killAll, startServe, writeToken } from '../peer/serve-process.js';

const BS = 1 << 20;
const dirs: { remove(): void }[] = [];
afterEach(() => {
  killAll();
  dirs.splice(0).forEach((d) => d.remove());
});

function keysFor(n: number, seed: number): string[] {
  const tokens = new Uint32Array(n * 16).map((_, i) => i * 13 + seed);
  return chainKeys(tokens, { blockTokens: 16, namespace: `fault-${seed}` }).keys();
}

function setup(): { dir: string; tokenFile: string } {
  const d = tempDir('kvtier-peer-fault-');
  dirs.push(d);
  return { dir: join(d.path, 'wh'), tokenFile: writeToken(d.path) };
}

describe('a peer killed mid-transfer', () => {
  it('rejects the waiting gets with KVTIER_PEER, never reports a partial block, and the client reconnects', async () => {
    const { dir, tokenFile } = setup();
    const server = await startServe({
      dir,
      blockBytes: BS,
      hostBytes: 96 * BS,
      fileBytes: 128 * BS,
      tokenFile,
    });
    const client = await connect(`127.0.0.1:${server.port}`, {
      tokenFile,
      reconnect: { initialMs: 20, maxMs: 200 },
    });
    try {
      const keys = keysFor(32, 1);
      const src = randomBytes(32 * BS);
      expect((await client.put(keys, src)).stored).toBe(32);

      // Far more in flight than socket buffers hold: stopping the server leaves transfers open.
      const dsts = Array.from({ length: 8 }, () => Buffer.alloc(32 * BS));
      const gets = dsts.map((d) => client.get(keys, d));
      await gets[0];
      server.child.kill('SIGSTOP');
      server.child.kill('SIGKILL');
      const outcomes = await Promise.allSettled(gets);
      let rejected = 0;
      outcomes.forEach((o, k) => {
        if (o.status === 'fulfilled') {
          // A get that resolved got every byte of every block it reports.
          expect(o.value.count).toBe(32);
          expect(dsts[k]!.equals(src)).toBe(true);
        } else {
          rejected++;
          expect(isKvtierError(o.reason, 'KVTIER_PEER'), String(o.reason)).toBe(true);
        }
      });
      expect(rejected).toBeGreaterThan(0);
      // Nothing is served while the peer is gone: an immediate KVTIER_PEER, no hang.
      await expect(client.lookup(keys)).rejects.toMatchObject({ code: 'KVTIER_PEER' });

      // A restarted peer on the same port: the client finds it again by itself.
      const again = await startServe({
        dir,
        blockBytes: BS,
        hostBytes: 96 * BS,
        fileBytes: 128 * BS,
        tokenFile,
        port: server.port,
      });
      expect(await client.waitConnected(20_000)).toBe(true);
      const k2 = keysFor(2, 2);
      const s2 = randomBytes(2 * BS);
      await client.put(k2, s2);
      const d2 = Buffer.alloc(2 * BS);
      expect((await client.get(k2, d2)).count).toBe(2);
      expect(d2.equals(s2)).toBe(true);
      await again.stop();
    } finally {
      await client.close();
    }
  });

  it('leaves a warehouse with a peer tier consistent: peer blocks become misses, local ones still hit', async () => {
    const { dir, tokenFile } = setup();
    const server = await startServe({
      dir,
      blockBytes: BS,
      hostBytes: 64 * BS,
      fileBytes: 64 * BS,
      tokenFile,
    });
    const wh = await Warehouse.open({
      blockBytes: BS,
      tiers: [
        { kind: 'host', bytes: 8 * BS },
        { kind: 'peer', url: `kvtier://127.0.0.1:${server.port}`, tokenFile, timeoutMs: 5000 },
      ],
    });
    try {
      const keys = keysFor(24, 3);
      const src = randomBytes(24 * BS);
      await wh.put(keys, src); // 8 stay local, all 24 go to the peer
      const local = wh.lookup(keys).tiers.filter((t) => t === 0).length;
      expect(local).toBeGreaterThan(0);

      const dst = Buffer.alloc(24 * BS);
      const pending = wh.get(keys, dst, { promote: false });
      server.child.kill('SIGSTOP');
      server.child.kill('SIGKILL');
      const got = await pending;
      // Every block reported found is whole and right; what the peer did not deliver is a miss.
      got.found.forEach((f, i) => {
        if (f)
          expect(
            dst.subarray(i * BS, (i + 1) * BS).equals(src.subarray(i * BS, (i + 1) * BS)),
          ).toBe(true);
      });
      expect(got.count).toBeGreaterThanOrEqual(local);
      const after = wh.stats();
      expect(after.tiers.find((t) => t.kind === 'peer')!.errors).toBeGreaterThanOrEqual(
        got.count === 24 ? 0 : 1,
      );

      // The local tiers are untouched and keep serving.
      const again = Buffer.alloc(24 * BS);
      const local2 = await wh.get(keys, again, { promote: false });
      expect(local2.count).toBe(local);
      local2.found.forEach((f, i) => {
        if (f)
          expect(
            again.subarray(i * BS, (i + 1) * BS).equals(src.subarray(i * BS, (i + 1) * BS)),
          ).toBe(true);
      });
      expect(wh.stats().tiers.find((t) => t.kind === 'peer')!.errors).toBeGreaterThan(0);
    } finally {
      await wh.close();
    }
  });
});

describe('a stalled peer', () => {
  it('hits the per-operation timeout with KVTIER_TIMEOUT, then the client recovers once it resumes', async () => {
    const { tokenFile } = setup();
    const server = await startServe({ blockBytes: 64 * 1024, hostBytes: 64 << 20, tokenFile });
    const client = await connect(`127.0.0.1:${server.port}`, {
      tokenFile,
      timeoutMs: 300,
      reconnect: { initialMs: 20, maxMs: 100 },
    });
    try {
      const keys = keysFor(4, 4);
      const src = randomBytes(4 * 64 * 1024);
      await client.put(keys, src);
      server.child.kill('SIGSTOP');
      const dst = Buffer.alloc(4 * 64 * 1024, 0x5a);
      await expect(client.get(keys, dst)).rejects.toMatchObject({ code: 'KVTIER_TIMEOUT' });
      // Nothing of a timed-out get is reported; a late answer cannot land after the rejection.
      expect(dst.every((b) => b === 0x5a)).toBe(true);
      server.child.kill('SIGCONT');
      expect(await client.waitConnected(20_000)).toBe(true);
      const d2 = Buffer.alloc(4 * 64 * 1024);
      expect((await client.get(keys, d2)).count).toBe(4);
      expect(d2.equals(src)).toBe(true);
    } finally {
      server.child.kill('SIGCONT');
      await client.close();
    }
  });
});

describe('a restarted peer', () => {
  it('SIGTERM finishes cleanly and the next start serves every block from its file tier', async () => {
    const { dir, tokenFile } = setup();
    const opts = { dir, blockBytes: BS, hostBytes: 16 * BS, fileBytes: 64 * BS, tokenFile };
    const first = await startServe(opts);
    const keys = keysFor(40, 5);
    const src = randomBytes(40 * BS);
    const c1 = await connect(`127.0.0.1:${first.port}`, { tokenFile, reconnect: false });
    expect((await c1.put(keys, src)).stored).toBe(40); // more than the host tier: both tiers used
    await c1.close();
    const exit = await first.stop('SIGTERM');
    expect(exit.code).toBe(0);
    expect(first.logs.some((l) => l.event === 'stopped')).toBe(true);

    const second = await startServe(opts);
    const listening = await second.waitFor('listening');
    expect(listening.blocks).toBe(40);
    const c2 = await connect(`127.0.0.1:${second.port}`, { tokenFile });
    try {
      const dst = Buffer.alloc(40 * BS);
      expect((await c2.get(keys, dst)).count).toBe(40);
      expect(dst.equals(src)).toBe(true);
    } finally {
      await c2.close();
      await second.stop();
    }
  });

  it('SIGTERM with requests in flight: each finishes or fails with KVTIER_PEER, and the process exits 0', async () => {
    const { dir, tokenFile } = setup();
    const server = await startServe({
      dir,
      blockBytes: BS,
      hostBytes: 32 * BS,
      fileBytes: 64 * BS,
      tokenFile,
    });
    const client = await connect(`127.0.0.1:${server.port}`, { tokenFile, reconnect: false });
    try {
      const keys = keysFor(16, 6);
      const src = randomBytes(16 * BS);
      await client.put(keys, src);
      const dsts = Array.from({ length: 6 }, () => Buffer.alloc(16 * BS));
      const gets = dsts.map((d) => client.get(keys, d));
      server.child.kill('SIGTERM');
      const outcomes = await Promise.allSettled(gets);
      outcomes.forEach((o, k) => {
        if (o.status === 'fulfilled') {
          expect(o.value.count).toBe(16);
          expect(dsts[k]!.equals(src)).toBe(true);
        } else {
          expect(isKvtierError(o.reason, 'KVTIER_PEER'), String(o.reason)).toBe(true);
        }
      });
      expect((await server.exited).code).toBe(0);
    } finally {
      await client.close();
    }
  });
});
