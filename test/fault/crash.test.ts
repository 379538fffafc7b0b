import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { Warehouse } from '../../lib/index.js';
import { blockFor } from '../blocks.js';
import { tempDir } from '../helpers.js';

const writer = fileURLToPath(new URL('./fixtures/crash-writer.mjs', import.meta.url));
const BS = 16 * 1024;
const ROUNDS = 16;
const dirs: { remove(): void }[] = [];
afterAll(() => dirs.forEach((d) => d.remove()));

/** Runs the writer until it has acknowledged `acks` puts, then SIGKILLs it; returns acked keys. */
function runAndKill(dir: string, seed: number, acks: number, mode: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [writer, dir, String(BS), String(seed), mode], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const acked: string[] = [];
    let seen = 0;
    let buffered = '';
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      buffered += d.toString();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (!line.startsWith('ok ')) continue;
        acked.push(...line.slice(3).split(' '));
        if (++seen === acks) child.kill('SIGKILL');
      }
    });
    child.on('exit', (code, signal) => {
      if (signal === 'SIGKILL') resolve(acked);
      else reject(new Error(`writer exited with ${code}: ${stderr}`));
    });
  });
}

describe.each(['file', 'host+file', 'host+file+writethrough'])(
  'SIGKILL during durable puts (%s)',
  (mode) => {
    it('loses no acknowledged block and returns nothing wrong, across many kills', async () => {
      const d = tempDir('kvtier-crash-');
      dirs.push(d);
      const dir = join(d.path, 'wh');
      const durable: string[] = [];
      for (let round = 0; round < ROUNDS; round++) {
        const acks = 1 + ((round * 7919) % 23);
        durable.push(...(await runAndKill(dir, round + 1, acks, mode)));
        const tiers = mode.startsWith('host+file')
          ? [
              { kind: 'host' as const, bytes: 8 * BS },
              { kind: 'file' as const, dir, bytes: 256 * BS },
            ]
          : [{ kind: 'file' as const, dir, bytes: 256 * BS }];
        const wh = await Warehouse.open({ blockBytes: BS, tiers });
        // The file tier holds 256 blocks: only keys acknowledged since it last filled can be
        // required, and the writer writes fewer than that across all rounds.
        const dst = Buffer.alloc(durable.length * BS);
        const got = await wh.get(durable, dst, { promote: false });
        const lost = durable.filter((_, i) => !got.found[i]);
        expect(lost, `round ${round}: acknowledged blocks lost`).toEqual([]);
        durable.forEach((k, i) => {
          expect(Buffer.compare(dst.subarray(i * BS, (i + 1) * BS), blockFor(k, BS)), k).toBe(0);
        });
        expect(wh.stats().corrupt).toBe(0);
        await wh.close();
      }
      expect(durable.length).toBeGreaterThan(ROUNDS);
      expect(durable.length).toBeLessThan(256);
    });
  },
);
