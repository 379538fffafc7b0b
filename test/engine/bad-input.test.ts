/**
 * Bad input on the engine channel: each gets its typed error, nothing is stored or written, and
 * the server keeps serving the engine and every other one.
 */
import { spawn } from 'node:child_process';
import { chmodSync, closeSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { EngineClient, HostPoolFile } from '../../lib/engine-channel/client.js';
import type { KvLayoutSpec } from '../../lib/layout/index.js';
import { prerequisite, tempDir, until } from '../helpers.js';
import { killAll, type ServeProcess } from '../peer/serve-process.js';
import {
  blockBytesOf,
  connect,
  keys,
  kvFirst,
  randomPool,
  startEngineServe,
} from './channel-helpers.js';

const dir = tempDir('kvtier-engine-bad-');
let serve: ServeProcess;
let socket: string;
let c: EngineClient;
let p: HostPoolFile;
const layout = kvFirst(8);
const pools: HostPoolFile[] = [];

beforeAll(async () => {
  ({ serve, socket } = await startEngineServe(dir.path));
  c = await connect(socket, 'bad');
  p = randomPool(layout.bytes);
  pools.push(p);
  await c.registerHostPool(p, layout.spec, 'kv');
});
afterAll(async () => {
  c.close();
  await Promise.all(pools.map((x) => x.close()));
  killAll();
  dir.remove();
});

const K = 'KVTIER_BAD_ARGUMENT';

describe('engine channel: bad registrations', () => {
  it('a layout that does not fit its memory', async () => {
    const small = randomPool(layout.bytes - 512);
    pools.push(small);
    await expect(c.registerHostPool(small, layout.spec, 'small')).rejects.toMatchObject({
      code: K,
      message: expect.stringMatching(/reaches byte/) as unknown,
    });
  });

  it("a layout whose block size is not the server's", async () => {
    const q = randomPool(1 << 16);
    pools.push(q);
    const spec = {
      ...layout.spec,
      headDim: 16,
      layers: [{ offset: 0 }, { offset: 16384 }],
    } as KvLayoutSpec;
    await expect(c.registerHostPool(q, spec, 'wide')).rejects.toMatchObject({
      code: K,
      message: expect.stringMatching(/blocks of 1024 bytes/) as unknown,
    });
  });

  it('a second registration of the same memory, on this connection or another', async () => {
    await expect(c.registerHostPool(p, layout.spec, 'again')).rejects.toMatchObject({ code: K });
    const other = await connect(socket, 'other');
    try {
      await expect(other.registerHostPool(p, layout.spec, 'kv')).rejects.toMatchObject({
        code: K,
        message: expect.stringMatching(/already registered/) as unknown,
      });
      // Another descriptor of the same file is the same memory too.
      const fd = openSync(`/proc/self/fd/${p.fd}`, 'r+');
      try {
        await expect(
          other.request({
            op: 'register',
            pool: 'dup',
            memory: { kind: 'memfd', fd, bytes: layout.bytes },
            layout: layout.spec,
          }),
        ).rejects.toMatchObject({ code: K });
      } finally {
        closeSync(fd);
      }
    } finally {
      other.close();
    }
  });

  it('a dead descriptor, and a descriptor that is not memory', async () => {
    const fd = openSync(join(dir.path, 'dead'), 'w+');
    closeSync(fd);
    const reg = (n: number) =>
      c.request({
        op: 'register',
        pool: `fd${n}`,
        memory: { kind: 'memfd', fd: n, bytes: layout.bytes },
        layout: layout.spec,
      });
    await expect(reg(fd)).rejects.toMatchObject({
      code: K,
      message: expect.stringMatching(/cannot be mapped/) as unknown,
    });
    // The connection itself: a socket, not a file.
    const sock = (c as unknown as { socket: { _handle: { fd: number } } }).socket._handle.fd;
    await expect(reg(sock)).rejects.toMatchObject({ code: K });
  });

  it('a pool name taken, an unknown memory kind, a GPU pool with a malformed handle', async () => {
    await expect(c.registerHostPool(p, layout.spec, 'kv')).rejects.toMatchObject({ code: K });
    await expect(
      c.request({ op: 'register', pool: 'x', memory: { kind: 'disk' }, layout: layout.spec }),
    ).rejects.toMatchObject({ code: K });
    await expect(
      c.request({
        op: 'register',
        pool: 'g',
        memory: { kind: 'cuda-ipc', device: 0, handles: ['00'], bytes: [1] },
        layout: layout.spec,
      }),
    ).rejects.toMatchObject({ code: K });
  });
});

describe('engine channel: bad requests', () => {
  const k = keys(2, 'bad');
  const keyPayload = Buffer.concat(k);

  it('a block id outside the pool stores and writes nothing', async () => {
    const before = blockBytesOf(p, layout.spec, 0);
    await expect(c.save('kv', k, [0, 8])).rejects.toMatchObject({
      code: K,
      message: expect.stringMatching(/blocks\[1\]/) as unknown,
    });
    expect((await c.lookup(k)).present).toEqual([false, false]);
    await expect(c.load('kv', k, [0, -1])).rejects.toMatchObject({ code: K });
    expect(blockBytesOf(p, layout.spec, 0).equals(before)).toBe(true);
  });

  it('keys of the wrong size, a payload that does not match, blocks of the wrong count', async () => {
    const short = k.map((x) => x.subarray(0, 8));
    await expect(c.save('kv', short, [0, 1])).rejects.toMatchObject({ code: K });
    await expect(
      c.request(
        { op: 'save', pool: 'kv', blocks: [0, 1], keyBytes: 32 },
        keyPayload.subarray(0, 40),
      ),
    ).rejects.toMatchObject({ code: K });
    await expect(c.save('kv', k, [0])).rejects.toMatchObject({ code: K });
    await expect(c.load('kv', k, [3, 3])).rejects.toMatchObject({ code: K });
    await expect(c.lookup([Buffer.alloc(40)])).rejects.toMatchObject({ code: K });
    expect((await c.lookup(k)).present).toEqual([false, false]);
  });

  it('an unknown pool, an unknown op, an unknown lease', async () => {
    await expect(c.save('nope', k, [0, 1])).rejects.toMatchObject({ code: K });
    await expect(c.request({ op: 'explode' })).rejects.toMatchObject({ code: K });
    await expect(c.unpin(424242)).rejects.toMatchObject({ code: K });
  });

  it('a frame that cannot be parsed closes only that connection', async () => {
    const bad = await connect(socket, 'garbage');
    const frame = Buffer.alloc(12);
    frame.writeUInt32LE(8, 0);
    frame.writeUInt32LE(4, 4);
    frame.write('{{{{', 8);
    bad.writeRaw(frame);
    // The server answers with id 0 and the reason, then closes.
    await until('the connection to end', () => bad.failed !== undefined);
    expect(bad.failed?.code).toBe(K);
    expect(bad.failed?.message).toMatch(/not valid JSON/);
    await expect(bad.lookup(k)).rejects.toMatchObject({ code: K });
    await serve.waitFor('engine-bad-frame');
  });

  it('after all of it the server still saves and loads for this engine', async () => {
    const want = blockBytesOf(p, layout.spec, 2);
    expect((await c.save('kv', k, [2, 3])).stored).toBe(2);
    expect((await c.load('kv', k, [5, 6])).prefix).toBe(2);
    expect(blockBytesOf(p, layout.spec, 5).equals(want)).toBe(true);
    expect(serve.child.exitCode).toBeNull();
  });
});

describe('engine channel: who may connect', () => {
  // Needs root to run a child as another uid (a privilege, not an installable prerequisite).
  const asRoot = prerequisite(
    process.getuid?.() === 0,
    'switching to another uid needs root',
    'privilege',
  );
  it.runIf(asRoot)('a peer running as another user is refused with KVTIER_AUTH', async () => {
    const d = tempDir('kvtier-engine-uid-');
    chmodSync(d.path, 0o755);
    const { socket: open } = await startEngineServe(d.path, ['--engine-socket-mode', '0666']);
    // The child speaks the documented frames with Node's built-ins only, so it needs nothing from
    // this checkout (which another uid may not be allowed to read): a hello, then the answer.
    const script = join(d.path, 'nobody.mjs');
    writeFileSync(
      script,
      `import { connect } from 'node:net';\n` +
        `const s = connect(${JSON.stringify(open)});\n` +
        `const json = Buffer.from(JSON.stringify({ op: 'hello', id: 1, version: 1 }));\n` +
        `const head = Buffer.alloc(8); head.writeUInt32LE(4 + json.length, 0); head.writeUInt32LE(json.length, 4);\n` +
        `s.write(Buffer.concat([head, json]));\n` +
        `let got = Buffer.alloc(0);\n` +
        `s.on('data', (b) => { got = Buffer.concat([got, b]);\n` +
        `  if (got.length >= 8 && got.length >= 8 + got.readUInt32LE(4)) {\n` +
        `    const h = JSON.parse(got.subarray(8, 8 + got.readUInt32LE(4)).toString());\n` +
        `    console.log(h.ok ? 'connected' : h.code); s.destroy(); } });\n` +
        `s.on('error', (e) => console.log(e.code));\n`,
    );
    chmodSync(script, 0o644);
    const out = await new Promise<string>((resolve) => {
      const child = spawn(process.execPath, [script], { uid: 65534, gid: 65534 });
      let text = '';
      child.stdout.on('data', (b: Buffer) => (text += b.toString()));
      child.stderr.on('data', (b: Buffer) => (text += b.toString()));
      child.on('exit', () => resolve(text.trim()));
    });
    expect(out).toBe('KVTIER_AUTH');
    // This user still gets in.
    const me = await connect(open);
    expect(me.blockBytes).toBe(512);
    me.close();
    d.remove();
  });
});
