/**
 * The engine channel's `session`, `hint` and `request` header fields (docs/engine-channel.md)
 * reach the Warehouse's policy: an in-process channel over a Warehouse whose policy records what
 * it is told. Bad values are error answers, and nothing is stored.
 */
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { EngineChannel } from '../../lib/engine-channel/server.js';
import { EngineClient, type HostPoolFile } from '../../lib/engine-channel/client.js';
import { isKvtierError } from '../../lib/core/errors.js';
import { LruPolicy } from '../../lib/policy/lru.js';
import { Warehouse, type AccessInfo } from '../../lib/index.js';
import { tempDir } from '../helpers.js';
import { BLOCK_BYTES, kvFirst, keys, randomPool } from './channel-helpers.js';

const dir = tempDir('kvtier-channel-hints-');
afterAll(() => dir.remove());

type Seen = { op: string } & AccessInfo;

describe('engine channel: session and hint fields', () => {
  it('save, load and lookup pass them to the policy; bad values store nothing', async () => {
    const seen: Seen[] = [];
    const wh = await Warehouse.open({
      blockBytes: BLOCK_BYTES,
      tiers: [{ kind: 'host', bytes: 64 * BLOCK_BYTES }],
      policy: <K>() => {
        const lru = new LruPolicy<K>();
        return Object.assign(lru, {
          insert: (key: K, info: AccessInfo) => {
            seen.push({ op: 'insert', ...info });
            LruPolicy.prototype.insert.call(lru, key, info);
          },
          touch: (key: K, info: AccessInfo) => {
            seen.push({ op: 'touch', ...info });
            LruPolicy.prototype.touch.call(lru, key, info);
          },
        });
      },
    });
    const channel = await EngineChannel.start({ path: join(dir.path, 'e.sock'), warehouse: wh });
    let client: EngineClient | undefined;
    let pool: HostPoolFile | undefined;
    try {
      client = await EngineClient.connect(channel.path, { name: 'hints', timeoutMs: 20_000 });
      const { spec, bytes } = kvFirst(8);
      pool = randomPool(bytes);
      await client.registerHostPool(pool, spec, 'kv');
      const k = keys(3);

      for (const bad of [{ hint: 'later' }, { session: '' }, { session: 1.5 }, { request: {} }]) {
        const e = await client.save('kv', k, [0, 1, 2], undefined, bad as object).then(
          () => undefined,
          (x: unknown) => x,
        );
        expect(isKvtierError(e, 'KVTIER_BAD_ARGUMENT'), String(e)).toBe(true);
        const l = await client.load('kv', k, [3, 4, 5], bad as object).catch((x: unknown) => x);
        expect(isKvtierError(l, 'KVTIER_BAD_ARGUMENT'), String(l)).toBe(true);
      }
      expect(seen).toEqual([]);
      expect(wh.keys()).toEqual([]);

      const saved = await client.save('kv', k, [0, 1, 2], undefined, {
        session: 'chat-1',
        hint: 'soon',
      });
      expect(saved.stored).toBe(3);
      expect(await client.lookup(k, { session: 'chat-1' })).toEqual({
        prefix: 3,
        present: [true, true, true],
      });
      const loaded = await client.load('kv', k, [3, 4, 5], { session: 'chat-1', hint: 'closed' });
      expect(loaded.prefix).toBe(3);
      await client.load('kv', k, [3, 4, 5], { session: 'chat-2' });

      const inserts = seen.filter((s) => s.op === 'insert');
      const touches = seen.filter((s) => s.op === 'touch');
      expect(inserts).toHaveLength(3);
      expect(touches).toHaveLength(6); // lookup touches nothing; two loads of 3 blocks
      const chat1 = inserts[0]!.session;
      expect(chat1).toBeDefined();
      expect(inserts.every((s) => s.session === chat1 && s.hint === 'soon')).toBe(true);
      expect(touches.slice(0, 3).every((s) => s.session === chat1 && s.hint === 'closed')).toBe(
        true,
      );
      const chat2 = touches.slice(3);
      expect(chat2.every((s) => s.session !== chat1 && s.hint === undefined)).toBe(true);
      // One request per save or load, whatever calls it takes inside.
      expect(new Set(inserts.map((s) => s.request)).size).toBe(1);
      expect(new Set(touches.map((s) => s.request)).size).toBe(2);
    } finally {
      client?.close();
      await channel.close();
      await pool?.close();
      await wh.close();
    }
  });
});
