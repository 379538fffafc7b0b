/**
 * `kvtier bench codec --llama`: the codecs on KV that node-llama-cpp itself produced, read out of
 * its saved state, and the engine's next token after the decoded KV is loaded back into it.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { runCodecLlama } from '../../lib/apps/bench/codec-llama.js';
import { TINY_MODEL } from '../../lib/llama/gguf-writer.js';
import { tempDir } from '../helpers.js';
import { loadEngine } from './engine.js';

const llama = await loadEngine();
const cli = fileURLToPath(new URL('../../dist/apps/cli/main.js', import.meta.url));

function bench(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, 'bench', 'codec', '--llama', ...args], {
    encoding: 'utf8',
    timeout: 300_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.skipIf(!llama)('codec accuracy on a real engine', () => {
  it('measures every codec on the engine KV and feeds the decoded KV back to the engine', async () => {
    const dir = tempDir('kvtier-codec-llama-');
    try {
      // TINY_MODEL: head dimension 16, so kivi groups of 16.
      const r = await runCodecLlama({
        tokens: 64,
        blockTokens: 16,
        queries: 2,
        tail: 4,
        threads: 1,
        group: 16,
        model: { ...TINY_MODEL, seed: 5 },
        dir: dir.path,
      });
      expect(r.blocks).toBe(4);
      expect(r.model.headDim).toBe(16);
      // 2 layers × K and V × 16 tokens × 2 KV heads × 16 dims × f16.
      expect(r.decodedBlockBytes).toBe(2 * 2 * 16 * 2 * 16 * 2);
      expect(r.kv.kRms).toBeGreaterThan(0);
      // Loading the original KV twice gives the same distribution: the deltas below are the codecs'.
      expect(r.engineNoise.maxProbDelta).toBe(0);
      expect(r.rows.map((x) => x.codec)).toEqual([
        'fp8-e4m3',
        'int8 (K/channel, V/token)',
        'int8 (per token)',
        'kivi4',
        'kivi2',
      ]);
      const by = Object.fromEntries(r.rows.map((x) => [x.codec, x]));
      for (const row of r.rows) {
        expect(row.ratio).toBeCloseTo(row.encodedBlockBytes / r.decodedBlockBytes, 12);
        for (const v of [row.kRelRms, row.vRelRms, row.attnRelErrMean, row.attnRelErrMax]) {
          expect(v).toBeGreaterThan(0);
          expect(v).toBeLessThan(1);
        }
        expect(row.attnRelErrMax).toBeGreaterThanOrEqual(row.attnRelErrMean);
      }
      // Fewer bits, more error: each lossy step shows in K, V and attention outputs.
      const k2 = by.kivi2!;
      const k4 = by.kivi4!;
      const i8 = by['int8 (K/channel, V/token)']!;
      for (const key of ['kRelRms', 'vRelRms', 'attnRelErrMean'] as const) {
        expect(k2[key]).toBeGreaterThan(k4[key]);
        expect(k4[key]).toBeGreaterThan(i8[key]);
      }
      // The decoded KV reached the engine: its next-token distribution moved, more for kivi2.
      expect(k2.engine.totalVariation).toBeGreaterThan(0);
      expect(k2.engine.totalVariation).toBeGreaterThan(i8.engine.totalVariation);
    } finally {
      dir.remove();
    }
  }, 300_000);

  it('reads a transposed V cache (flash attention off) the same way', async () => {
    const dir = tempDir('kvtier-codec-llama-');
    try {
      const r = await runCodecLlama({
        tokens: 32,
        blockTokens: 16,
        queries: 1,
        tail: 2,
        threads: 1,
        group: 16,
        flashAttention: false,
        model: { ...TINY_MODEL, seed: 6 },
        dir: dir.path,
      });
      // Gather and scatter are checked inverse inside the run; the values must be V's, not K's.
      expect(r.vTransposed).toBe(true);
      expect(r.engineNoise.maxProbDelta).toBe(0);
      expect(r.kv.vRms).not.toBe(r.kv.kRms);
      const kivi2 = r.rows.find((x) => x.codec === 'kivi2')!;
      expect(kivi2.vRelRms).toBeGreaterThan(0);
      expect(kivi2.engine.totalVariation).toBeGreaterThan(0);
    } finally {
      dir.remove();
    }
  }, 300_000);

  it('kvtier bench codec --llama prints the report, and refuses what it cannot do', () => {
    const r = bench('--llama-tokens', '64', '--tokens', '16', '--queries', '2', '--json');
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as {
      bench: string;
      blocks: number;
      model: { weights: string };
      rows: { codec: string; kRelRms: number }[];
    };
    expect(j.bench).toBe('codec-llama');
    expect(j.blocks).toBe(4);
    expect(j.model.weights).toBe('random');
    expect(j.rows).toHaveLength(5);
    for (const row of j.rows) expect(row.kRelRms).toBeGreaterThan(0);
    for (const [args, message] of [
      [['--plot', 'x.svg'], /--llama draws no chart/],
      [['--llama-tokens', '8', '--tokens', '16'], /must hold at least one block/],
      [['--llama-tokens', 'many'], /llama tokens/],
    ] as [string[], RegExp][]) {
      const b = bench(...args);
      expect(b.status, args.join(' ')).not.toBe(0);
      expect(b.stderr).toMatch(message);
      expect(b.stderr).toMatch(/\[KVTIER_BAD_ARGUMENT\]/);
    }
  }, 300_000);
});
