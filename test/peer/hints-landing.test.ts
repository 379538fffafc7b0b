/**
 * A put's call section on the landing path (docs/protocol.md, "Landing"): blocks read straight
 * into claimed host-tier slots are stored with the put's session, hint and request like copied
 * ones, so a 'closed' hint decides evictions there too. In one process (the server's landed-block
 * counter says the puts did land), over real sockets, a real Warehouse and `return-time`.
 */
import { afterEach, describe, expect, it } from 'vitest';

import {
  chainKeys,
  connect,
  PeerServer,
  Warehouse,
  type PeerClient,
  type PeerPutOptions,
} from '../../lib/index.js';
import { until } from '../helpers.js';

const BS = 4096;
const HOST_BLOCKS = 48; // landing claims at most an eighth: 6 slots
const secret = 'hints-landing-secret-0123456789ab';
const open: { close(): Promise<void> }[] = [];

afterEach(async () => {
  for (const x of open.reverse()) await x.close();
  open.length = 0;
});

const chain = (seed: number, blocks: number): string[] =>
  chainKeys(
    Array.from({ length: blocks * 16 }, (_, i) => seed * 100_000 + i),
    { blockTokens: 16 },
  ).keys();

/**
 * B (6 blocks) is put, then A (6 blocks, landed, with `aOptions`), then C needs room for 1 to 7
 * blocks more than is free (1, plus the 6 slots claimed at most). Per chain: blocks left.
 */
async function replay(aOptions: PeerPutOptions): Promise<{ a: number; b: number }> {
  const wh = await Warehouse.open({
    blockBytes: BS,
    tiers: [{ kind: 'host', bytes: HOST_BLOCKS * BS }],
    policy: 'return-time',
  });
  open.push(wh);
  const server = PeerServer.start({
    host: '127.0.0.1',
    port: 0,
    warehouse: wh,
    secret: Buffer.from(secret),
  });
  open.push(server);
  const client: PeerClient = await connect(`127.0.0.1:${server.port}`, { token: secret });
  open.push(client);
  const [a, b, c] = [chain(1, 6), chain(2, 6), chain(3, HOST_BLOCKS - 11)];
  const stored = (): number => wh.keys().length;
  const claimed = (n: number): Promise<void> =>
    until(`${n} landing slots`, () => wh.stats().tiers[0]!.usedBlocks - stored() >= n);
  expect((await client.put(b, Buffer.alloc(6 * BS, 2), { session: 'sB' })).stored).toBe(6);
  await claimed(6);
  const before = server.putBlocks.landed;
  expect((await client.put(a, Buffer.alloc(6 * BS, 1), aOptions)).stored).toBe(6);
  expect(server.putBlocks.landed).toBe(before + 6);
  const r = await client.put(c, Buffer.alloc(c.length * BS, 3), { session: 'sC' });
  expect(r.stored).toBe(c.length);
  const held = (keys: string[]): number => wh.lookup(keys).tiers.filter((t) => t === 0).length;
  return { a: held(a), b: held(b) };
}

describe('a landed put carries its call to the policy', () => {
  it("a 'closed' A goes before the older B; without the hint B goes first", async () => {
    const call = { session: 'sA', request: 'rA' };
    const hinted = await replay({ ...call, hint: 'closed' });
    const plain = await replay(call);
    // The chain that goes first goes whole before the other loses a block (1 to 7 evictions).
    expect(hinted.a).toBeLessThan(6);
    if (hinted.b < 6) expect(hinted.a).toBe(0);
    expect(plain.b).toBeLessThan(6);
    if (plain.a < 6) expect(plain.b).toBe(0);
  });
});
