// Importing GPU memory another process shares by CUDA IPC handle: from a second kvtier process,
// and from PyTorch (the way an inference engine shares its KV pool). Bytes travel both ways.
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { createCopyEngine, DeviceRegion, Region, TransferBatch } from '../../lib/index.js';
import { prerequisite } from '../helpers.js';
import { hasGpu } from './gpu.js';

const dist = fileURLToPath(new URL('../../dist/index.js', import.meta.url));
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

interface Shared {
  handle: string;
  offset: number;
  bytes: number;
  sha: string;
}

/** A child that shares GPU memory, prints what it shared, and prints its hash again on "check". */
class Exporter {
  readonly lines: AsyncIterableIterator<string>;
  constructor(readonly child: ChildProcessWithoutNullStreams) {
    this.lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    child.stderr.on('data', (d: Buffer) => process.stderr.write(d));
  }
  async next<T>(): Promise<T> {
    const line: IteratorResult<string> = await this.lines.next();
    if (line.done) throw new Error('exporter exited early');
    return JSON.parse(line.value) as T;
  }
  async check(): Promise<string> {
    this.child.stdin.write('check\n');
    return (await this.next<{ sha: string }>()).sha;
  }
  stop(): void {
    this.child.stdin.end();
    this.child.kill();
  }
}

const NODE_EXPORTER = `
import * as kv from ${JSON.stringify(dist)};
import { createHash, randomFillSync } from 'node:crypto';
import { createInterface } from 'node:readline';
const bytes = 6 << 20;
const engine = kv.createCopyEngine();
const dev = kv.DeviceRegion.allocate(bytes + 8192);
const host = kv.Region.allocate(bytes, { pin: true });
randomFillSync(host.view());
(await engine.submit(new kv.TransferBatch().copy(dev, 8192, host, 0, bytes))).throwIfFailed();
const view = kv.DeviceRegion.wrap(dev.pointer + 8192n, bytes);
const shared = view.exportIpc();
const hash = () => createHash('sha256').update(host.view()).digest('hex');
console.log(JSON.stringify({ handle: Buffer.from(shared.handle).toString('hex'), offset: shared.offset, bytes, sha: hash() }));
for await (const line of createInterface({ input: process.stdin })) {
  (await engine.submit(new kv.TransferBatch().copy(host, 0, dev, 8192, bytes))).throwIfFailed();
  console.log(JSON.stringify({ sha: hash() }));
}
await engine.close();
`;

const TORCH_EXPORTER = `
import hashlib, json, sys, torch
n = 5 * (1 << 20) + 4096
pad = torch.empty(12345, dtype=torch.uint8, device='cuda')  # so the tensor is not at offset 0
t = torch.randint(0, 256, (n,), dtype=torch.uint8, device='cuda')
torch.cuda.synchronize()
info = t.untyped_storage()._share_cuda_()
handle = info[1]
# PyTorch prefixes the 64-byte CUDA handle with a format version and a kind byte: 'c' for memory
# from cudaMalloc (expandable segments, kind 'e', are not CUDA IPC handles).
if len(handle) == 66:
    assert handle[1:2] == b'c', handle[:2]
    handle = handle[2:]
h = lambda: hashlib.sha256(t.cpu().numpy().tobytes()).hexdigest()
print(json.dumps({'handle': handle.hex(), 'offset': info[3], 'bytes': n, 'sha': h()}), flush=True)
for line in sys.stdin:
    torch.cuda.synchronize()
    print(json.dumps({'sha': h()}), flush=True)
`;

async function importAndSwap(exporter: Exporter): Promise<void> {
  const shared = await exporter.next<Shared>();
  expect(shared.handle).toHaveLength(128);
  const region = DeviceRegion.import(Buffer.from(shared.handle, 'hex'), {
    offset: shared.offset,
    bytes: shared.bytes,
  });
  expect(region.origin).toBe('imported');
  expect(region.byteLength).toBe(shared.bytes);
  const engine = createCopyEngine();
  const host = Region.allocate(shared.bytes, { pin: true });
  (await engine.submit(new TransferBatch().copy(host, 0, region, 0, shared.bytes))).throwIfFailed();
  expect(sha(host.view())).toBe(shared.sha);
  // And back: what this process writes, the exporter reads.
  randomFillSync(host.view());
  (await engine.submit(new TransferBatch().copy(region, 0, host, 0, shared.bytes))).throwIfFailed();
  expect(await exporter.check()).toBe(sha(host.view()));
  await region.close();
  await host.close();
  await engine.close();
}

describe.skipIf(!hasGpu)('CUDA IPC import', () => {
  const children: Exporter[] = [];
  afterAll(() => children.forEach((c) => c.stop()));

  it('imports memory another kvtier process exports, at an offset', async () => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', NODE_EXPORTER]);
    const exporter = new Exporter(child);
    children.push(exporter);
    await importAndSwap(exporter);
  });

  it("imports a PyTorch tensor's memory from a Python process", async () => {
    const python = process.env.KVTIER_PYTHON ?? 'python3';
    const hasTorch =
      spawnSync(python, ['-c', 'import torch; assert torch.cuda.is_available()']).status === 0;
    // PyTorch is not a Debian package CI installs; on GPU hosts it is part of the image.
    if (!prerequisite(hasTorch, `${python} with CUDA PyTorch`, 'hardware')) return;
    const exporter = new Exporter(spawn(python, ['-c', TORCH_EXPORTER]));
    children.push(exporter);
    await importAndSwap(exporter);
  });

  it('refuses to re-export imported memory', async () => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', NODE_EXPORTER]);
    const exporter = new Exporter(child);
    children.push(exporter);
    const shared = await exporter.next<Shared>();
    const region = DeviceRegion.import(Buffer.from(shared.handle, 'hex'), {
      offset: shared.offset,
    });
    expect(() => region.exportIpc()).toThrowError(
      expect.objectContaining({ code: 'KVTIER_NOT_AVAILABLE' }),
    );
    // Past the end of the shared allocation.
    expect(() =>
      DeviceRegion.import(Buffer.from(shared.handle, 'hex'), { offset: 2 ** 40 }),
    ).toThrowError(expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }));
    await region.close();
  });
});
