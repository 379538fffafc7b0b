// `kvtier bench gpu`'s command line and its refusal without a GPU; the figures themselves need a
// GPU and are produced by the benchmark on one (bench/results/gpu-*.json).
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { gpuBenchOptions } from '../../lib/apps/cli/bench-gpu.js';
import { probe } from '../../lib/core/probe.js';
import { badArgument, prerequisite } from '../helpers.js';

const cli = fileURLToPath(new URL('../../dist/apps/cli/main.js', import.meta.url));
const base = {
  sizes: '1MiB,4MiB',
  trials: '3',
  fileSize: '64MiB',
  gatherBlocks: '8',
  restoreTokens: '0',
  dir: '.',
  python: 'python3',
  peer: true,
};

describe('kvtier bench gpu options', () => {
  it('turns the command line into options', () => {
    const o = gpuBenchOptions({ ...base, restoreTokens: '131072', peer: false });
    expect(o.sizes).toEqual([1 << 20, 4 << 20]);
    expect(o.trials).toBe(3);
    expect(o.fileBytes).toBe(64 << 20);
    expect(o.gatherBlocks).toBe(8);
    expect(o.restoreTokens).toBe(131072);
    expect(o.python).toBeNull();
  });

  it('refuses bad input with KVTIER_BAD_ARGUMENT', () => {
    expect(badArgument(() => gpuBenchOptions({ ...base, trials: '0' }))).toMatch(/trials/);
    expect(badArgument(() => gpuBenchOptions({ ...base, restoreTokens: '100' }))).toMatch(/16/);
    badArgument(() => gpuBenchOptions({ ...base, sizes: '1MiB,lots' }));
    badArgument(() => gpuBenchOptions({ ...base, gatherBlocks: '-1' }));
  });

  it('exits with KVTIER_NOT_AVAILABLE and the reason where there is no GPU', ({ skip }) => {
    const noGpu = !probe().cuda.available;
    // On a GPU host the benchmark runs instead.
    if (!prerequisite(noGpu, 'a CUDA GPU is present, so the GPU benchmark runs', 'hardware'))
      skip();
    const r = spawnSync(process.execPath, [cli, 'bench', 'gpu', '--no-peer'], { encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/KVTIER_NOT_AVAILABLE/);
    expect(r.stderr).toMatch(/CUDA/);
  });
});
