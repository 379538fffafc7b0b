/**
 * NativeVerbs (native/net/verbs_link.cc) on its own, in a child process whose loader path starts
 * with "soft verbs" (test/peer/soft-verbs.c): a TEST HARNESS that moves bytes with
 * process_vm_readv/writev, not RDMA hardware. Two links in one process connect their queue pairs
 * to each other, so reads and writes, completions, error completions and argument checks all run
 * without a NIC.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { native } from '../../lib/core/native.js';
import { tempDir } from '../helpers.js';
import { buildSoftVerbs } from '../peer/soft-verbs.js';

const dist = fileURLToPath(new URL('../../dist/core/native.js', import.meta.url));
const dir = tempDir('kvtier-verbs-link-');
let soft: Record<string, string> | undefined;

beforeAll(() => {
  soft = buildSoftVerbs(dir.path);
});
afterAll(() => dir.remove());

function child(script: string, env: Record<string, string> = {}): Record<string, unknown> {
  const r = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { native } from ${JSON.stringify(dist)};\nconst a = native();\n${script}`,
    ],
    { encoding: 'utf8', env: { ...process.env, ...soft, ...env }, timeout: 60_000 },
  );
  if (r.status !== 0) throw new Error(`child failed (${r.status ?? r.signal}): ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

const PAIR = `
  const server = new a.NativeVerbs({ role: 'server' });
  const client = new a.NativeVerbs({ role: 'client' });
  const sq = server.createQueuePair();
  const cq = client.createQueuePair();
  server.connectQueuePair(sq.id, cq.address);
  client.connectQueuePair(cq.id, sq.address);
  const code = async (f) => { try { await f(); return 'ok'; } catch (e) { return e.code + ': ' + e.message; } };
`;

describe('NativeVerbs', () => {
  it('without an RDMA device: KVTIER_NOT_AVAILABLE naming the step', () => {
    if (native().verbsProbe({}).available) return; // a machine with a device
    let error: unknown;
    try {
      new (native().NativeVerbs)({});
    } catch (e) {
      error = e;
    }
    expect(error).toMatchObject({ code: 'KVTIER_NOT_AVAILABLE' });
    expect(String((error as Error).message)).toMatch(/verbs transport is not available: .+/);
  });

  it('reads and writes between registered memory, more work requests than the queue pair takes', () => {
    if (!soft) return;
    const r = child(`${PAIR}
      const remote = new a.NativeRegion(1 << 20, 'off', 2 ** 31);
      const bytes = new Uint8Array(remote.buffer);
      for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31 + 7) & 255;
      const reg = server.register(remote, 'write');
      // 2000 reads of 512 bytes: four times the queue pair's 512 outstanding work requests.
      const dst = Buffer.alloc(2000 * 512);
      const ops = [];
      for (let i = 0; i < 2000; i++) ops.push(0, 0, i * 512, 512, reg.address + (i % 2048) * 512, reg.rkey);
      await client.post(cq.id, new Float64Array(ops), [dst]);
      let readOk = true;
      for (let i = 0; i < 2000; i++) {
        const at = (i % 2048) * 512;
        if (Buffer.compare(dst.subarray(i * 512, i * 512 + 512), Buffer.from(bytes.subarray(at, at + 512))) !== 0) readOk = false;
      }
      // A write from a Region's view (cached registration) into the remote region's second half.
      const local = new a.NativeRegion(65536, 'off', 2 ** 31);
      new Uint8Array(local.buffer).fill(0x5a);
      const view = new Uint8Array(local.buffer, 4096, 8192);
      await client.post(cq.id, new Float64Array([1, 0, 0, 8192, reg.address + 524288, reg.rkey]), [view]);
      const written = bytes.subarray(524288, 524288 + 8192).every((b) => b === 0x5a);
      const untouched = bytes[524288 + 8192] === ((524288 + 8192) * 31 + 7) % 256;
      const empty = await code(() => client.post(cq.id, new Float64Array(0), []));
      const device = client.device;
      client.close(); server.close();
      process.stdout.write(JSON.stringify({ readOk, written, untouched, empty, device }));
    `);
    expect(r).toEqual({
      readOk: true,
      written: true,
      untouched: true,
      empty: 'ok',
      device: 'softverbs0',
    });
  });

  it('a bad remote key or range fails with KVTIER_PEER, and later work on that queue pair flushes', () => {
    if (!soft) return;
    const r = child(`${PAIR}
      const remote = new a.NativeRegion(65536, 'off', 2 ** 31);
      const reg = server.register(remote, 'read');
      const dst = Buffer.alloc(4096);
      const badKey = await code(() => client.post(cq.id, new Float64Array([0, 0, 0, 4096, reg.address, reg.rkey ^ 1]), [dst]));
      const after = await code(() => client.post(cq.id, new Float64Array([0, 0, 0, 4096, reg.address, reg.rkey]), [dst]));
      const q2 = client.createQueuePair();
      const s2 = server.createQueuePair();
      client.connectQueuePair(q2.id, s2.address);
      server.connectQueuePair(s2.id, q2.address);
      const beyond = await code(() => client.post(q2.id, new Float64Array([0, 0, 0, 4096, reg.address + 65536 - 2048, reg.rkey]), [dst]));
      client.destroyQueuePair(q2.id);
      const destroyed = await code(() => client.post(q2.id, new Float64Array([0, 0, 0, 16, reg.address, reg.rkey]), [dst]));
      client.close(); server.close();
      process.stdout.write(JSON.stringify({ badKey, after, beyond, destroyed }));
    `);
    expect(r.badKey).toMatch(/^KVTIER_PEER: RDMA READ failed: remote access error/);
    expect(r.after).toMatch(/^KVTIER_PEER: RDMA READ failed: flushed/);
    expect(r.beyond).toMatch(/^KVTIER_PEER: RDMA READ failed: remote access error/);
    expect(r.destroyed).toMatch(/^KVTIER_CLOSED/);
  });

  it('refuses bad arguments before posting anything', () => {
    if (!soft) return;
    const r = child(`${PAIR}
      const remote = new a.NativeRegion(65536, 'off', 2 ** 31);
      const reg = server.register(remote, 'read');
      const dst = Buffer.alloc(4096);
      const post = (ops, targets = [dst]) => code(() => client.post(cq.id, new Float64Array(ops), targets));
      const out = {
        opcode: await post([2, 0, 0, 16, reg.address, reg.rkey]),
        stride: await post([0, 0, 0, 16, reg.address]),
        target: await post([0, 1, 0, 16, reg.address, reg.rkey]),
        range: await post([0, 0, 4000, 200, reg.address, reg.rkey]),
        zero: await post([0, 0, 0, 0, reg.address, reg.rkey]),
        rkey: await post([0, 0, 0, 16, reg.address, 2 ** 32]),
        plain: await code(() => server.register(Buffer.alloc(64), 'read')),
        access: await code(() => server.register(remote, 'readwrite')),
        noAccess: await code(() => server.register(remote)),
        clientLends: await code(() => client.register(remote, 'read')),
        role: await code(() => new a.NativeVerbs({ role: 'peer' })),
        address: await code(() => client.connectQueuePair(cq.id, Buffer.alloc(27))),
        again: await code(() => client.connectQueuePair(cq.id, sq.address)),
        unconnected: await code(() => client.post(client.createQueuePair().id, new Float64Array([0, 0, 0, 16, reg.address, reg.rkey]), [dst])),
      };
      client.close(); server.close();
      out.closed = await code(() => client.createQueuePair());
      process.stdout.write(JSON.stringify(out));
    `);
    for (const name of [
      'opcode',
      'stride',
      'target',
      'range',
      'zero',
      'rkey',
      'plain',
      'access',
      'noAccess',
      'clientLends',
      'role',
      'address',
      'again',
      'unconnected',
    ]) {
      expect(r[name], name).toMatch(/^KVTIER_BAD_ARGUMENT/);
    }
    expect(r.closed).toMatch(/^KVTIER_CLOSED/);
  });

  it("access follows the role: 'read' keys refuse WRITE, a client's queue pair refuses the peer", () => {
    if (!soft) return;
    const r = child(`${PAIR}
      const fresh = () => {
        const c = client.createQueuePair();
        const s = server.createQueuePair();
        client.connectQueuePair(c.id, s.address);
        server.connectQueuePair(s.id, c.address);
        return { c: c.id, s: s.id };
      };
      const region = new a.NativeRegion(65536, 'off', 2 ** 31);
      const bytes = new Uint8Array(region.buffer);
      bytes.fill(0x11);
      const readKey = server.register(region, 'read');
      const writeKey = server.register(region, 'write');
      const src = Buffer.alloc(4096, 0x77);
      const dst = Buffer.alloc(4096);
      const distinct = readKey.rkey !== writeKey.rkey && readKey.address === writeKey.address;
      // 'read': the client may read, not write.
      const q1 = fresh();
      const readOk = await code(() => client.post(q1.c, new Float64Array([0, 0, 0, 4096, readKey.address, readKey.rkey]), [dst]));
      const readBytes = dst.every((b) => b === 0x11);
      const writeRead = await code(() => client.post(q1.c, new Float64Array([1, 0, 0, 4096, readKey.address, readKey.rkey]), [src]));
      const unwritten = bytes.every((b) => b === 0x11);
      // 'write': the client may write.
      const q2 = fresh();
      const writeOk = await code(() => client.post(q2.c, new Float64Array([1, 0, 0, 4096, writeKey.address, writeKey.rkey]), [src]));
      const written = bytes.subarray(0, 4096).every((b) => b === 0x77) && bytes[4096] === 0x11;
      // The other way round: a server-role link posting through a client's queue pair finds it
      // grants nothing, even with a key that allows the operation (a third link, in this process,
      // lends the memory, so that only the queue pair can refuse).
      const lender = new a.NativeVerbs({ role: 'server' });
      const target = new a.NativeRegion(65536, 'off', 2 ** 31);
      new Uint8Array(target.buffer).fill(0x22);
      const open = lender.register(target, 'write');
      const q3 = fresh();
      const peerRead = await code(() => server.post(q3.s, new Float64Array([0, 0, 0, 4096, open.address, open.rkey]), [dst]));
      const q4 = fresh();
      const peerWrite = await code(() => server.post(q4.s, new Float64Array([1, 0, 0, 4096, open.address, open.rkey]), [src]));
      const targetUntouched = new Uint8Array(target.buffer).every((b) => b === 0x22);
      client.close(); server.close(); lender.close();
      process.stdout.write(JSON.stringify({ distinct, readOk, readBytes, writeRead, unwritten, writeOk, written, peerRead, peerWrite, targetUntouched }));
    `);
    expect(r.distinct).toBe(true);
    expect(r.readOk).toBe('ok');
    expect(r.readBytes).toBe(true);
    expect(r.writeRead).toMatch(/^KVTIER_PEER: RDMA WRITE failed: remote access error/);
    expect(r.unwritten).toBe(true);
    expect(r.writeOk).toBe('ok');
    expect(r.written).toBe(true);
    expect(r.peerRead).toMatch(/^KVTIER_PEER: RDMA READ failed: remote access error/);
    expect(r.peerWrite).toMatch(/^KVTIER_PEER: RDMA WRITE failed: remote access error/);
    expect(r.targetUntouched).toBe(true);
  });

  it('a failed poll rejects the transfers in flight with KVTIER_PEER and posts nothing more', () => {
    if (!soft) return;
    const failFile = `${dir.path}/poll-fail`;
    const r = child(
      `${PAIR}
      const fs = await import('node:fs');
      const remote = new a.NativeRegion(65536, 'off', 2 ** 31);
      const reg = server.register(remote, 'read');
      const dst = Buffer.alloc(4096);
      const read = () => code(() => client.post(cq.id, new Float64Array([0, 0, 0, 4096, reg.address, reg.rkey]), [dst]));
      const before = await read();
      fs.writeFileSync(${JSON.stringify(failFile)}, '');
      const failed = await read();
      fs.rmSync(${JSON.stringify(failFile)});
      // The completion queue is shared by every queue pair: nothing more is posted on any.
      const q2 = client.createQueuePair();
      const s2 = server.createQueuePair();
      client.connectQueuePair(q2.id, s2.address);
      server.connectQueuePair(s2.id, q2.address);
      const later = await read();
      const other = await code(() => client.post(q2.id, new Float64Array([0, 0, 0, 4096, reg.address, reg.rkey]), [dst]));
      client.close(); server.close();
      process.stdout.write(JSON.stringify({ before, failed, later, other }));
    `,
      { KVTIER_SOFT_VERBS_POLL_FAIL: failFile },
    );
    expect(r.before).toBe('ok');
    expect(r.failed).toMatch(/^KVTIER_PEER: .*ibv_poll_cq failed.*memory stays held/);
    expect(r.later).toMatch(/^KVTIER_PEER: the verbs device failed earlier: .*ibv_poll_cq failed/);
    expect(r.other).toMatch(/^KVTIER_PEER: the verbs device failed earlier/);
  });
});
