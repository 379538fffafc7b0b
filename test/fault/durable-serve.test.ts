/**
 * Durable puts through a real `kvtier serve` process, SIGKILLed under traffic again and again:
 * after each kill, serve restarts on the same --dir, and every block a durable put acknowledged
 * must be there with the right bytes. The file tier is sized for everything the client can put,
 * and each restart checks it never filled, so a missing block is a loss, never an eviction.
 *
 * Three ways a put reaches the store, one per case: landed straight in host-tier slots with the
 * DURABLE flag, placed by a two-step offer with the flag (blocks of 1 MiB), and copied by a server
 * that makes every put durable (`serve --durability sync`) for a client that asks for nothing.
 */
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { chainKeys, connect, type PeerClient } from '../../lib/index.js';
import { blockFor } from '../blocks.js';
import { tempDir } from '../helpers.js';
import {
  killAll,
  runCli,
  serveArgs,
  startServe,
  writeToken,
  type ServeProcess,
} from '../peer/serve-process.js';

interface Case {
  name: string;
  blockBytes: number;
  hostBlocks: number;
  kills: number;
  /** The client asks for durability on each put (RequestFlag.DURABLE). */
  flag: boolean;
  extra: string[];
}

const CASES: Case[] = [
  // 256 host slots: landing claims 32 of them, so one-step puts land in place.
  {
    name: 'landed puts with DURABLE',
    blockBytes: 16 << 10,
    hostBlocks: 256,
    kills: 22,
    flag: true,
    extra: [],
  },
  // Blocks of 1 MiB and too few host slots to land: the client offers, the server places.
  {
    name: 'two-step puts with DURABLE',
    blockBytes: 1 << 20,
    hostBlocks: 16,
    kills: 12,
    flag: true,
    extra: [],
  },
  {
    name: 'serve --durability sync',
    blockBytes: 16 << 10,
    hostBlocks: 256,
    kills: 18,
    flag: false,
    extra: ['--durability', 'sync'],
  },
];

/** Concurrent put loops of the client, puts each may make per round, blocks per put at most. */
const WORKERS = 3;
const PUTS = 3;
const MAX_PUT = 2;
/** Acknowledged puts after which the round's SIGKILL is sent: others are still in flight. */
const acksIn = (round: number): number => 1 + ((round * 5) % (WORKERS * PUTS - 2));

const dirs: { remove(): void }[] = [];
afterAll(() => {
  killAll();
  dirs.forEach((d) => d.remove());
});

/**
 * One round of traffic: WORKERS loops put fresh keys (durable when `flag`) until the round's
 * acknowledgements are in, then serve is SIGKILLed with the other puts still out. Returns the
 * keys acknowledged stored or present.
 */
async function trafficThenKill(
  c: Case,
  serve: ServeProcess,
  client: PeerClient,
  round: number,
): Promise<string[]> {
  const acked: string[] = [];
  let acks = 0;
  const killed = serve.exited;
  const worker = async (w: number): Promise<void> => {
    for (let n = 0; n < PUTS; n++) {
      const count = 1 + ((round + w + n) % MAX_PUT);
      const tokens = new Uint32Array(count * 4).map((_, i) => i + 1);
      const keys = chainKeys(tokens, {
        blockTokens: 4,
        namespace: `${c.name}-${round}-${w}-${n}`,
      }).keys();
      const src = Buffer.concat(keys.map((k) => blockFor(k, c.blockBytes)));
      let r;
      try {
        r = await client.put(keys, src, { durable: c.flag });
      } catch {
        return; // the connection died with the server
      }
      keys.forEach((k, i) => {
        if (r.status[i] !== 'rejected') acked.push(k);
      });
      if (++acks === acksIn(round)) serve.child.kill('SIGKILL');
    }
  };
  await Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w)));
  serve.child.kill('SIGKILL'); // every put was answered before the kill: kill now
  expect((await killed).signal).toBe('SIGKILL');
  return acked;
}

describe.each(CASES)('SIGKILL of kvtier serve under durable puts: $name', (c) => {
  it(`loses no acknowledged block and returns nothing wrong, across ${c.kills} kills`, async () => {
    const d = tempDir('kvtier-durable-serve-');
    dirs.push(d);
    const tokenFile = writeToken(d.path);
    // Room for every block the client can put in every round, and one round more.
    const fileBlocks = (c.kills + 1) * WORKERS * PUTS * MAX_PUT;
    const options = {
      dir: join(d.path, 'wh'),
      blockBytes: c.blockBytes,
      hostBytes: c.hostBlocks * c.blockBytes,
      fileBytes: fileBlocks * c.blockBytes,
      tokenFile,
      extra: c.extra,
    };
    const durable: string[] = [];
    let serve = await startServe(options);
    for (let round = 0; round < c.kills; round++) {
      const url = `127.0.0.1:${serve.port}`;
      const client = await connect(url, { tokenFile, reconnect: false });
      durable.push(...(await trafficThenKill(c, serve, client, round)));
      await client.close();

      serve = await startServe(options);
      // The file tier never filled, so it never evicted: whatever is missing below was lost.
      const listening = serve.logs.find((l) => l.event === 'listening')!;
      const file = (listening.tiers as { kind: string; capacityBlocks: number }[]).find(
        (t) => t.kind === 'file',
      )!;
      expect(file.capacityBlocks).toBe(fileBlocks);
      expect(listening.blocks as number, `round ${round}: file tier filled`).toBeLessThan(
        fileBlocks,
      );

      const check = await connect(`127.0.0.1:${serve.port}`, { tokenFile, reconnect: false });
      try {
        // A few blocks at a time: the 1 MiB case reads everything back every round.
        for (let from = 0; from < durable.length; from += 16) {
          const keys = durable.slice(from, from + 16);
          const dst = Buffer.alloc(keys.length * c.blockBytes);
          const got = await check.get(keys, dst);
          const lost = keys.filter((_, i) => !got.found[i]);
          expect(lost, `round ${round}: acknowledged durable blocks lost`).toEqual([]);
          const wrong = keys.filter(
            (k, i) =>
              !dst
                .subarray(i * c.blockBytes, (i + 1) * c.blockBytes)
                .equals(blockFor(k, c.blockBytes)),
          );
          expect(wrong, `round ${round}: wrong bytes`).toEqual([]);
        }
        expect(check.corrupt).toBe(0);
      } finally {
        await check.close();
      }
    }
    await serve.stop('SIGTERM');
    // Traffic really was acknowledged, round after round.
    expect(durable.length).toBeGreaterThanOrEqual(c.kills);
  }, 240_000);
});

describe('kvtier serve --durability', () => {
  it('refuses a mode other than none or sync, and sync without a file tier', async () => {
    const d = tempDir('kvtier-durable-serve-');
    dirs.push(d);
    const tokenFile = writeToken(d.path);
    const base = { blockBytes: 4096, hostBytes: 64 * 4096, tokenFile };
    const bad = await runCli(serveArgs({ ...base, extra: ['--durability', 'maybe'] }));
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--durability must be none or sync.*KVTIER_BAD_ARGUMENT/);
    const noFile = await runCli(serveArgs({ ...base, extra: ['--durability', 'sync'] }));
    expect(noFile.code).not.toBe(0);
    expect(noFile.stderr).toMatch(/needs a file tier.*KVTIER_BAD_ARGUMENT/);
  });
});
