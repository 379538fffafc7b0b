/**
 * The RDMA verbs transport of the peer protocol, above the device. These machines (and CI) have
 * no RDMA NIC, so this is a TEST HARNESS, not RDMA hardware: test/peer/soft-verbs.c, compiled
 * here against the system's <infiniband/verbs.h>, is a stub libibverbs.so.1 whose RDMA READ is
 * process_vm_readv from the peer process and whose WRITE is process_vm_writev into it, with
 * remote keys and bounds checked against the peer's registrations and error completions for bad
 * keys and dead peers. Both `kvtier serve` and the client run as child processes with it first on
 * their loader path, so everything kvtier does above the device runs for real: the handshake,
 * queue pair bring-up, registrations, one-sided reads and writes, completion polling, leases,
 * checksums and faults. Nothing here says the path works on a real NIC.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { chainKeys } from '../../lib/index.js';
import { tempDir, until } from '../helpers.js';
import { keysMeta, RawPeer, rawFrame, type RawFrame } from './raw.js';
import { buildSoftVerbs } from './soft-verbs.js';
import {
  killAll,
  runCli,
  startServe,
  TOKEN,
  writeToken,
  type ServeProcess,
} from './serve-process.js';

const CLIENT = fileURLToPath(new URL('./verbs-client.mjs', import.meta.url));
const dir = tempDir('kvtier-verbs-');
let soft: Record<string, string> | undefined;
let tokenFile: string;

interface ClientReport {
  transport?: string;
  reason?: string;
  stored?: number;
  expected?: number;
  found?: number;
  equal?: number;
  differ?: number;
  corrupt?: number;
  missingFound?: number;
  gets?: { ok: boolean; code?: string; equal?: number; differ?: number }[];
  error?: { code: string; message: string };
}

/** Whether the soft provider was built (buildSoftVerbs fails in CI when it cannot be). */
function ready(): boolean {
  return soft !== undefined;
}

function runClient(
  scenario: string,
  port: number,
  transport: string,
  blocks = 8,
  env: Record<string, string> = soft ?? {},
): Promise<ClientReport> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [CLIENT, scenario, `kvtier://127.0.0.1:${port}`, tokenFile, transport, String(blocks)],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code, signal) => {
      try {
        resolve(JSON.parse(stdout.trim().split('\n').pop() ?? '') as ClientReport);
      } catch {
        reject(
          new Error(`client exited (${code ?? signal}) without a report: ${stdout} ${stderr}`),
        );
      }
    });
  });
}

function serve(
  blockBytes: number,
  extra: string[] = [],
  opts: { withSoft?: boolean; hostBlocks?: number } = {},
): Promise<ServeProcess> {
  return startServe({
    blockBytes,
    hostBytes: (opts.hostBlocks ?? 64) * blockBytes,
    tokenFile,
    extra,
    ...(opts.withSoft === false ? {} : { env: soft! }),
  });
}

beforeAll(() => {
  tokenFile = writeToken(dir.path);
  soft = buildSoftVerbs(dir.path);
});

afterAll(() => {
  killAll();
  dir.remove();
});

describe('peer transport: RDMA verbs over the soft verbs test harness', () => {
  it.each([
    ['4 KiB', 4096, 16],
    ['64 KiB', 64 * 1024, 8],
    ['1 MiB', 1 << 20, 3],
  ])(
    'put then get %s blocks: batches and many requests in flight, every byte compared',
    async (_, bs, blocks) => {
      if (!ready()) return;
      const server = await serve(bs, ['--transport', 'verbs'], { hostBlocks: 8 * blocks });
      try {
        const r = await runClient('roundtrip', server.port, 'verbs', blocks);
        expect(r.error).toBeUndefined();
        expect(r.transport).toBe('verbs');
        expect(r.reason).toMatch(/verbs/);
        expect(r.stored).toBe(6 * blocks);
        expect(r.found).toBe(r.expected);
        expect(r.equal).toBe(r.expected);
        expect(r.differ).toBe(0);
        expect(r.corrupt).toBe(0);
        expect(r.missingFound).toBe(0);
        const line = await server.waitFor('connection_ready');
        expect(line.transport).toBe('verbs');
        await server.waitFor('verbs_connected');
      } finally {
        await server.stop();
      }
    },
  );

  it('blocks the server reads up from its file tier (a registered bounce region) come back right', async () => {
    if (!ready()) return;
    const bs = 64 * 1024;
    const files = join(dir.path, 'files');
    mkdirSync(files, { recursive: true });
    // A host tier of 4 blocks: most of the 48 blocks put live in the file tier only.
    const server = await startServe({
      blockBytes: bs,
      hostBytes: 4 * bs,
      dir: files,
      fileBytes: 256 * bs,
      tokenFile,
      extra: ['--transport', 'verbs'],
      env: soft!,
    });
    try {
      const r = await runClient('roundtrip', server.port, 'verbs', 8);
      expect(r.error).toBeUndefined();
      expect(r.transport).toBe('verbs');
      expect(r.found).toBe(r.expected);
      expect(r.equal).toBe(r.expected);
      expect(r.corrupt).toBe(0);
    } finally {
      await server.stop();
    }
  });

  it("'auto' picks verbs when both ends have it, and tcp with a reason when the server has not", async () => {
    if (!ready()) return;
    const both = await serve(4096);
    try {
      const r = await runClient('handshake', both.port, 'auto');
      expect(r.error).toBeUndefined();
      expect(r.transport).toBe('verbs');
      expect(r.reason).toMatch(/verbs: both ends/);
      expect((await both.waitFor('connection_ready')).transport).toBe('verbs');
    } finally {
      await both.stop();
    }
    // No soft verbs on the server's loader path: it cannot offer verbs.
    const tcpOnly = await serve(4096, [], { withSoft: false });
    try {
      const r = await runClient('roundtrip', tcpOnly.port, 'auto', 4);
      expect(r.error).toBeUndefined();
      expect(r.transport).toBe('tcp');
      expect(r.reason).toMatch(/tcp: the server offers no verbs/);
      expect(r.equal).toBe(r.expected);
      expect((await tcpOnly.waitFor('connection_ready')).transport).toBe('tcp');
      // A client that insists on verbs is told the server does not offer it.
      const insist = await runClient('handshake', tcpOnly.port, 'verbs');
      expect(insist.error?.code).toBe('KVTIER_NOT_AVAILABLE');
    } finally {
      await tcpOnly.stop();
    }
  });

  it("'--transport verbs' on a server without an RDMA device fails with KVTIER_NOT_AVAILABLE", async () => {
    const r = await runCli([
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--block-bytes',
      '4096',
      '--host-bytes',
      '65536',
      '--token-file',
      tokenFile,
      '--transport',
      'verbs',
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr + r.stdout).toMatch(/KVTIER_NOT_AVAILABLE/);
  });

  describe('bad input on the control channel', () => {
    let server: ServeProcess;
    const BS = 4096;
    const keys = (n: number, seed: number): string[] =>
      chainKeys(
        new Uint32Array(n * 4).map((_, i) => i + seed * 7919),
        { blockTokens: 4, namespace: `verbs-bad-${seed}` },
      ).keys();
    /** A soft verbs address naming this (test) process: the server's queue pair accepts it. */
    const address = (): Buffer => {
      const a = Buffer.alloc(28);
      a.writeUInt16LE(1, 2);
      a.writeUInt32LE(0x99, 4);
      a[12] = 0xfe;
      a[13] = 0x80;
      a.writeUInt32LE(process.pid, 20);
      a.write('soft', 24, 'latin1');
      return a;
    };
    const withFlags = (f: Buffer, flags: number): Buffer => {
      f.writeUInt8(flags, 5);
      return f;
    };
    async function expectProtocolClose(peer: RawPeer): Promise<RawFrame | undefined> {
      const f = await peer.next();
      expect(f?.type).toBe(0x05);
      expect(f?.meta.readUInt32LE(0)).toBe(1); // PROTOCOL
      await peer.ended;
      expect(peer.closed).toBe(true);
      return f;
    }
    async function verbsPeer(): Promise<RawPeer> {
      const peer = await RawPeer.open(server.port);
      const hs = await peer.handshake(TOKEN, { transport: 1 });
      expect(hs && !('type' in hs)).toBe(true);
      peer.send(rawFrame(0x20, 0, address()));
      const ready = await peer.next();
      expect(ready?.type).toBe(0x21);
      expect(ready?.meta.length).toBe(28);
      return peer;
    }

    beforeAll(async () => {
      if (!soft) return;
      server = await serve(BS, ['--transport', 'verbs', '--handshake-timeout', '1000']);
    });

    it('VERBS_CONNECT or a REMOTE_READ get on a tcp connection: PROTOCOL, and the connection closes', async () => {
      if (!ready()) return;
      for (const bytes of [
        rawFrame(0x20, 0, address()),
        withFlags(rawFrame(0x12, 1, keysMeta(keys(1, 1))), 0x02),
        rawFrame(0x22, 1, Buffer.alloc(0)),
      ]) {
        const peer = await RawPeer.open(server.port);
        expect(await peer.handshake(TOKEN)).toMatchObject({ blockBytes: BS });
        peer.send(bytes);
        await expectProtocolClose(peer);
      }
    });

    it('PUT_DATA whose REMOTE_WRITTEN does not match its offer: PROTOCOL, on tcp and on verbs', async () => {
      if (!ready()) return;
      const k = keys(2, 2);
      // tcp: an offer answered for data over the socket, then "written remotely".
      const tcp = await RawPeer.open(server.port);
      await tcp.handshake(TOKEN);
      tcp.send(rawFrame(0x18, 7, keysMeta(k)));
      const accept = await tcp.next();
      expect(accept?.type).toBe(0x19);
      tcp.send(withFlags(rawFrame(0x1a, 7, accept!.meta.subarray(0, 8 + 16)), 0x04));
      await expectProtocolClose(tcp);
      // verbs: an offer answered with placements, then data over the socket instead.
      const verbs = await verbsPeer();
      verbs.send(rawFrame(0x18, 8, keysMeta(k)));
      const placed = await verbs.next();
      expect(placed?.type).toBe(0x19);
      expect(placed?.meta.length).toBe(8 + 2 * 8 + 2 * 16);
      verbs.send(rawFrame(0x1a, 8, placed!.meta.subarray(0, 8 + 16), Buffer.alloc(2 * BS)));
      await expectProtocolClose(verbs);
    });

    it('requests before VERBS_CONNECT, a second VERBS_CONNECT: PROTOCOL; an unknown RELEASE is ignored', async () => {
      if (!ready()) return;
      const early = await RawPeer.open(server.port);
      await early.handshake(TOKEN, { transport: 1 });
      early.send(rawFrame(0x14, 1, keysMeta(keys(1, 3))));
      await expectProtocolClose(early);

      const twice = await verbsPeer();
      twice.send(rawFrame(0x20, 0, address()));
      await expectProtocolClose(twice);

      const peer = await verbsPeer();
      peer.send(rawFrame(0x22, 12345, Buffer.alloc(0)));
      peer.send(rawFrame(0x14, 2, keysMeta(keys(1, 4))));
      const answer = await peer.next();
      expect(answer?.type).toBe(0x15); // LOOKUP_RESULT: the RELEASE changed nothing
      // A get over verbs with nothing stored: an answer without placements and no lease.
      peer.send(withFlags(rawFrame(0x12, 3, keysMeta(keys(1, 5))), 0x02));
      const get = await peer.next();
      expect(get?.type).toBe(0x13);
      expect(get?.meta.length).toBe(16);
      expect(get?.meta.readUInt8(8)).toBe(1); // MISSING
      peer.close();
    });

    it('a block lent for RDMA READ stays pinned until RELEASE', async () => {
      if (!ready()) return;
      const peer = await verbsPeer();
      const [k] = keys(1, 6);
      peer.send(rawFrame(0x10, 1, keysMeta([k!]), Buffer.alloc(BS, 0xab)));
      expect((await peer.next())?.type).toBe(0x11);
      peer.send(withFlags(rawFrame(0x12, 2, keysMeta([k!])), 0x02));
      const got = await peer.next();
      expect(got?.type).toBe(0x13);
      expect(got?.payload.length).toBe(0);
      expect(got?.meta.length).toBe(8 + 8 + 16);
      expect(got?.meta.readUInt8(8)).toBe(0); // OK
      expect(got!.meta.readUInt8(9) & 1).toBe(1); // with its checksum
      expect(got?.meta.readBigUInt64LE(16)).not.toBe(0n); // where to read it
      const del = async (rid: number): Promise<number | undefined> => {
        peer.send(rawFrame(0x16, rid, keysMeta([k!])));
        return (await peer.next())?.meta.readUInt8(8);
      };
      expect(await del(3)).toBe(2); // REJECTED: pinned by a reader
      peer.send(rawFrame(0x22, 2, Buffer.alloc(0)));
      peer.send(rawFrame(0x14, 4, keysMeta([k!])));
      expect((await peer.next())?.type).toBe(0x15);
      expect(await del(5)).toBe(0); // removed once released
      peer.close();
    });

    /** Deletes `k` from a fresh connection until that succeeds: no lease pins it any more. */
    async function deletedOnceUnpinned(k: string): Promise<void> {
      const other = await verbsPeer();
      let rid = 1;
      await until('the leases ended with their connection', async () => {
        other.send(rawFrame(0x16, rid++, keysMeta([k])));
        const f = await other.next();
        expect(f?.type).toBe(0x17);
        return f?.meta.readUInt8(8) === 0; // OK: removed (REJECTED while pinned)
      });
      other.close();
    }

    it('more than 64 leases at once: LIMIT, the connection closes, its leases end, others are served', async () => {
      if (!ready()) return;
      const peer = await verbsPeer();
      const [k] = keys(1, 7);
      peer.send(rawFrame(0x10, 1, keysMeta([k!]), Buffer.alloc(BS, 0xcd)));
      expect((await peer.next())?.type).toBe(0x11);
      // 65 gets of the block, none released: the 65th finds 64 leases held (or being prepared).
      const gets: Buffer[] = [];
      for (let rid = 100; rid < 165; rid++) {
        gets.push(withFlags(rawFrame(0x12, rid, keysMeta([k!])), 0x02));
      }
      peer.send(Buffer.concat(gets));
      let answered = 0;
      let f = await peer.next();
      while (f?.type === 0x13) {
        expect(f.meta.readUInt8(8)).toBe(0); // OK, lent
        answered++;
        f = await peer.next();
      }
      expect(answered).toBeLessThanOrEqual(64);
      expect(f?.type).toBe(0x05);
      expect(f?.meta.readUInt32LE(0)).toBe(4); // LIMIT
      await peer.ended;
      expect(peer.closed).toBe(true);
      await deletedOnceUnpinned(k!);
    });

    it('a second GET with the id of a lease in progress: PROTOCOL, and nothing stays pinned', async () => {
      if (!ready()) return;
      const peer = await verbsPeer();
      const [k] = keys(1, 8);
      peer.send(rawFrame(0x10, 1, keysMeta([k!]), Buffer.alloc(BS, 0xef)));
      expect((await peer.next())?.type).toBe(0x11);
      // Both in one write: the second arrives while the first is still being lent.
      const get = (): Buffer => withFlags(rawFrame(0x12, 9, keysMeta([k!])), 0x02);
      peer.send(Buffer.concat([get(), get()]));
      let f = await peer.next();
      if (f?.type === 0x13) f = await peer.next(); // the first may be answered before
      expect(f?.type).toBe(0x05);
      expect(f?.meta.readUInt32LE(0)).toBe(1); // PROTOCOL
      expect(await peer.next()).toBeUndefined();
      expect(peer.closed).toBe(true);
      // The first lease ended with the connection: the block can be deleted.
      await deletedOnceUnpinned(k!);
    });

    it('a verbs connection that never sends VERBS_CONNECT is closed at the handshake limit', async () => {
      if (!ready()) return;
      const idle = await RawPeer.open(server.port);
      await idle.handshake(TOKEN, { transport: 1 });
      const f = await idle.next();
      expect(f?.type).toBe(0x05);
      await idle.ended;
      expect(idle.closed).toBe(true);
    });

    it('the server keeps serving verbs clients after all that', async () => {
      if (!ready()) return;
      const r = await runClient('roundtrip', server.port, 'verbs', 4);
      expect(r.error).toBeUndefined();
      expect(r.equal).toBe(r.expected);
    });
  });

  it('the server SIGKILLed mid-transfer: the gets reject KVTIER_PEER and report nothing unread as found', async () => {
    if (!ready()) return;
    const server = await serve(64 * 1024, ['--transport', 'verbs']);
    const hold = join(dir.path, 'hold');
    rmSync(hold, { force: true });
    rmSync(`${hold}.reached`, { force: true });
    const report = runClient('fault', server.port, 'verbs', 8, {
      ...soft!,
      KVTIER_SOFT_VERBS_HOLD: hold,
    });
    // The client's first RDMA READ is waiting on the hold file: the server answered, lent the
    // blocks and now dies before the bytes move.
    await until('an RDMA READ under way', () => existsSync(`${hold}.reached`));
    server.child.kill('SIGKILL');
    await server.exited;
    rmSync(hold, { force: true });
    const r = await report;
    expect(r.error).toBeUndefined();
    expect(r.stored).toBe(8);
    expect(r.gets).toHaveLength(4);
    for (const g of r.gets!) {
      if (g.ok) {
        // Only a get whose every read completed may resolve, and then with the right bytes.
        expect(g.differ).toBe(0);
      } else {
        expect(g.code).toBe('KVTIER_PEER');
      }
    }
    expect(r.gets!.some((g) => !g.ok)).toBe(true);
  });
});
