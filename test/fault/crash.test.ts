import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { BlockCodec } from '../../lib/core/codec.js';
import { Warehouse } from '../../lib/index.js';
import { blockFor } from '../blocks.js';
import { tempDir } from '../helpers.js';

const writer = fileURLToPath(new URL('./fixtures/crash-writer.mjs', import.meta.url));
const BS = 16 * 1024;
const ROUNDS = 16;
const MAX_BATCH = 8; // the writer's largest put, in blocks
/** Acknowledgements the parent waits for before its SIGKILL in `round`. */
const acksIn = (round: number): number => 1 + ((round * 7919) % 23);
/** Puts a writer may make in a round: a few past the kill, so SIGKILL lands mid-put. */
const putsIn = (round: number): number => acksIn(round) + 3;
// The file tier holds every block the writer can ever put, so nothing is evicted for capacity
// and every acknowledged block must still be there (a slower build gets further before the kill
// lands, but never past putsIn()).
let maxBlocks = 0;
for (let r = 0; r < ROUNDS; r++) maxBlocks += putsIn(r) * MAX_BATCH;
const FILE_BLOCKS = maxBlocks + MAX_BATCH;
const dirs: { remove(): void }[] = [];
afterAll(() => dirs.forEach((d) => d.remove()));

/**
 * Runs the writer until it has acknowledged `acks` puts (or made all `puts` it may), then
 * SIGKILLs it; returns the acknowledged keys and the sizes of the acknowledged puts.
 */
function runAndKill(
  dir: string,
  seed: number,
  acks: number,
  puts: number,
  mode: string,
): Promise<{ keys: string[]; sizes: number[] }> {
  return new Promise((resolve, reject) => {
    const args = [writer, dir, String(BS), String(seed), mode, String(FILE_BLOCKS), String(puts)];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const acked: string[] = [];
    const sizes: number[] = [];
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
        if (line === 'done') child.kill('SIGKILL');
        if (!line.startsWith('ok ')) continue;
        const keys = line.slice(3).split(' ');
        acked.push(...keys);
        sizes.push(keys.length);
        if (++seen === acks) child.kill('SIGKILL');
      }
    });
    child.on('exit', (code, signal) => {
      if (signal === 'SIGKILL') resolve({ keys: acked, sizes });
      else reject(new Error(`writer exited with ${code}: ${stderr}`));
    });
  });
}

/** The writer's 'file+fp8' mode: its fp16 blocks (bit 14 cleared), stored fp8-encoded. */
const fp8 = {
  codec: 'fp8-e4m3' as const,
  layout: { dtype: 'fp16', numLayers: 1, blockTokens: 16, kvHeads: 2, headDim: BS / 128 },
};
function expected(key: string, mode: string): Buffer {
  const block = blockFor(key, BS);
  if (mode !== 'file+fp8') return block;
  for (let i = 1; i < BS; i += 2) block[i]! &= 0xbf;
  const codec = BlockCodec.open(fp8, fp8.layout);
  const enc = new Uint8Array(codec.encodedBytes);
  codec.encode(block, enc);
  codec.decode(enc, block);
  return block;
}

describe.each(['file', 'host+file', 'host+file+writethrough', 'file+fp8'])(
  'SIGKILL during durable puts (%s)',
  (mode) => {
    it('loses no acknowledged block and returns nothing wrong, across many kills', async () => {
      const d = tempDir('kvtier-crash-');
      dirs.push(d);
      const dir = join(d.path, 'wh');
      const durable: string[] = [];
      const sizes = new Set<number>();
      for (let round = 0; round < ROUNDS; round++) {
        const run = await runAndKill(dir, round + 1, acksIn(round), putsIn(round), mode);
        durable.push(...run.keys);
        run.sizes.forEach((n) => sizes.add(n));
        const file = {
          kind: 'file' as const,
          dir,
          bytes: FILE_BLOCKS * BS,
          ...(mode === 'file+fp8' ? { codec: fp8 } : {}),
        };
        const tiers = mode.startsWith('host+file')
          ? [{ kind: 'host' as const, bytes: 8 * BS }, file]
          : [file];
        const wh = await Warehouse.open({ blockBytes: BS, tiers });
        // Room was never short: the file tier never filled, so it never evicted, and a block
        // missing below is lost, not evicted.
        const fileStats = wh.stats().tiers.find((t) => t.kind === 'file')!;
        expect(fileStats.usedBlocks, `round ${round}: file tier filled`).toBeLessThan(FILE_BLOCKS);
        const dst = Buffer.alloc(durable.length * BS);
        const got = await wh.get(durable, dst, { promote: false });
        const lost = durable.filter((_, i) => !got.found[i]);
        expect(lost, `round ${round}: acknowledged blocks lost`).toEqual([]);
        durable.forEach((k, i) => {
          expect(Buffer.compare(dst.subarray(i * BS, (i + 1) * BS), expected(k, mode)), k).toBe(0);
        });
        expect(wh.stats().corrupt).toBe(0);
        await wh.close();
      }
      expect(durable.length).toBeGreaterThan(ROUNDS);
      // The writer's puts really vary in size (its generator once gave every put one block).
      expect(sizes.size, [...sizes].join(',')).toBeGreaterThan(3);
    });
  },
);
