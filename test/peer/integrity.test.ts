/**
 * End-to-end checksums, in one process: a server over a real Warehouse and a client over real
 * sockets. Blocks put in two steps are stored with the checksum the transport computed as they
 * landed; a block corrupted in the server's memory is never reported found by the client.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  chainKeys,
  connect,
  PeerServer,
  Region,
  Warehouse,
  type PeerClient,
} from '../../lib/index.js';
import { native } from '../../lib/core/native.js';
import { randomBytes, tempDir } from '../helpers.js';
import { keysMeta, RawPeer, rawFrame } from './raw.js';

const BS = 1 << 20; // two-step puts
const secret = Buffer.from('integrity-test-secret-0123456789');
let wh: Warehouse;
let server: PeerServer;
let client: PeerClient;

beforeAll(async () => {
  wh = await Warehouse.open({ blockBytes: BS, tiers: [{ kind: 'host', bytes: 16 * BS }] });
  server = PeerServer.start({ host: '127.0.0.1', port: 0, warehouse: wh, secret });
  client = await connect(`127.0.0.1:${server.port}`, { token: secret });
});

afterAll(async () => {
  await client.close();
  await server.close();
  await wh.close();
});

const keysFor = (n: number, seed: number): string[] =>
  chainKeys(
    new Uint32Array(n * 4).map((_, i) => i + seed * 101),
    {
      blockTokens: 4,
      namespace: 'integrity',
    },
  ).keys();

describe('peer integrity', () => {
  it('a two-step put stores the checksum the local warehouse verifies on get', async () => {
    const keys = keysFor(3, 1);
    const src = randomBytes(3 * BS);
    expect((await client.put(keys, src)).stored).toBe(3);
    // The server's own get checks every block's CRC-32C: a wrong stored checksum is a miss.
    const local = Region.allocate(3 * BS);
    try {
      const got = await wh.get(keys, local);
      expect(got.count).toBe(3);
      expect(Buffer.from(local.buffer).equals(src)).toBe(true);
      expect(wh.stats().corrupt).toBe(0);
    } finally {
      await local.close();
    }
  });

  it('a block corrupted in the server memory is not reported found, and is counted', async () => {
    const keys = keysFor(2, 2);
    const src = randomBytes(2 * BS);
    await client.put(keys, src);
    await wh.hostSlots.lend(keys.slice(1), async ([b]) => {
      const view = (b!.target as Region).view(b!.offset, BS);
      view[12345]! ^= 0xff;
      return Promise.resolve();
    });
    const dst = Buffer.alloc(2 * BS);
    const got = await client.get(keys, dst);
    expect(got.found).toEqual([true, false]);
    expect(client.corrupt).toBe(1);
    expect(dst.subarray(0, BS).equals(src.subarray(0, BS))).toBe(true);
  });

  it('over TCP, blocks read up from the file tier carry their CRC-32C too', async () => {
    const bs = 64 * 1024;
    const dir = tempDir('kvtier-integrity-');
    const fileWh = await Warehouse.open({
      blockBytes: bs,
      tiers: [
        { kind: 'host', bytes: 2 * bs },
        { kind: 'file', dir: dir.path, bytes: 64 * bs },
      ],
    });
    const fileServer = PeerServer.start({ host: '127.0.0.1', port: 0, warehouse: fileWh, secret });
    const peer = await RawPeer.open(fileServer.port);
    try {
      await peer.handshake(secret.toString());
      const keys = keysFor(8, 3);
      const src = randomBytes(8 * bs);
      peer.send(rawFrame(0x10, 1, keysMeta(keys), src));
      expect((await peer.next())?.type).toBe(0x11);
      // Most of the blocks now live below the host tier.
      expect(fileWh.lookup(keys).tiers.filter((t) => t > 0).length).toBeGreaterThan(0);
      peer.send(rawFrame(0x12, 2, keysMeta(keys)));
      const got = await peer.next();
      expect(got?.type).toBe(0x13);
      expect(got?.payload.equals(src)).toBe(true);
      keys.forEach((_, i) => {
        expect(got!.meta.readUInt8(8 + 8 * i)).toBe(0); // OK
        expect(got!.meta.readUInt8(8 + 8 * i + 1) & 1).toBe(1); // with its checksum
        const crc = native().crc32c(src.subarray(i * bs, (i + 1) * bs));
        expect(got!.meta.readUInt32LE(8 + 8 * i + 4)).toBe(crc);
      });
    } finally {
      peer.close();
      await fileServer.close();
      await fileWh.close();
      dir.remove();
    }
  });
});
