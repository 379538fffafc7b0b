import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it, onTestFinished } from 'vitest';

import { openTrace } from '../../lib/apps/sim/open.js';
import {
  parseTierRates,
  percentiles,
  simulateTimed,
  type TimedOptions,
} from '../../lib/apps/sim/timed.js';
import { KvtierError } from '../../lib/core/errors.js';
import { tempDir } from '../helpers.js';

/**
 * Two requests an hour apart, 2 tokens per block:
 *   t=0      keys [1, 2]     4 input tokens: all missed, prefilled.
 *   t=1 h    keys [1, 2, 3]  6 input tokens.
 * With gpu = 1 block and host = 10 blocks (LRU): placing 2 evicts 1 from the GPU down to host,
 * so the second request finds 1 in host (2 tokens loaded) and 2 on the GPU (2 tokens, free),
 * and prefills 2 tokens. With the GPU tier alone, 1 is gone: a prefix miss at block 0, so all 6
 * tokens are prefilled.
 *
 * Prices: prefill 1,000 tokens/s (1 ms per token); 1 MB per token; host 2 GB/s and 0.5 ms:
 *   with the warehouse: request 1 = 4 ms; request 2 = 0.5 + 2e6 B / 2e9 B/s (1 ms) + 2 ms = 3.5 ms
 *   GPU tier alone:      4 ms and 6 ms;   no cache: 4 ms and 6 ms.
 */
function writeTrace(): string {
  const dir = tempDir('kvtier-timed-');
  onTestFinished(() => dir.remove());
  const file = join(dir.path, 'two.jsonl');
  writeFileSync(
    file,
    [
      { kvtier: 'trace', version: 1, blockTokens: 2 },
      { t: 0, keys: [1, 2], in: 4 },
      { t: 3_600_000, keys: [1, 2, 3], in: 6 },
    ]
      .map((l) => JSON.stringify(l))
      .join('\n') + '\n',
  );
  return file;
}

const options: TimedOptions = {
  tiers: [
    { name: 'gpu', capacity: 1 },
    { name: 'host', capacity: 10 },
  ],
  rates: [
    { gbps: 1, latencyMs: 0 },
    { gbps: 2, latencyMs: 0.5 },
  ],
  policy: 'lru',
  blockTokens: 2,
  bytesPerToken: 1e6,
  prefillTokensPerSecond: 1000,
};

describe('kvtier sim --timed', () => {
  it('prices a hand-computed trace: TTFT with and without the warehouse, GPU-s avoided', async () => {
    const r = await simulateTimed(await openTrace(writeTrace()), options);
    expect(r.requests).toBe(2);
    expect(r.trafficHours).toBeCloseTo(1, 12);
    expect(r.ttft.warehouse.p50).toBeCloseTo(3.5, 9);
    expect(r.ttft.warehouse.p90).toBeCloseTo(4, 9);
    expect(r.ttft.warehouse.p99).toBeCloseTo(4, 9);
    expect(r.ttft.warehouse.mean).toBeCloseTo(3.75, 9);
    expect(r.ttft.gpuOnly.p50).toBeCloseTo(4, 9);
    expect(r.ttft.gpuOnly.p99).toBeCloseTo(6, 9);
    expect(r.ttft.noCache.mean).toBeCloseTo(5, 9);
    // 4 tokens found at 1,000 tokens/s over one hour of traffic; none with the GPU tier alone.
    expect(r.prefillSecondsAvoidedPerHour.warehouse).toBeCloseTo(0.004, 12);
    expect(r.prefillSecondsAvoidedPerHour.gpuOnly).toBe(0);
    expect(r.loadSecondsPerHour).toBeCloseTo(0.0015, 12);
    expect(r.hitRate.warehouse).toBeCloseTo(0.4, 12);
  });

  it('a slower host tier costs exactly its extra transfer time', async () => {
    const r = await simulateTimed(await openTrace(writeTrace()), {
      ...options,
      rates: [options.rates[0]!, { gbps: 0.5, latencyMs: 0.5 }],
    });
    // 2e6 B at 0.5 GB/s = 4 ms: request 2 = 0.5 + 4 + 2 = 6.5 ms.
    expect(r.ttft.warehouse.p99).toBeCloseTo(6.5, 9);
  });

  it('rejects a lower tier without a rate and a non-positive prefill rate', async () => {
    const trace = await openTrace(writeTrace());
    await expect(simulateTimed(trace, { ...options, rates: [options.rates[0]!] })).rejects.toThrow(
      KvtierError,
    );
    await expect(simulateTimed(trace, { ...options, prefillTokensPerSecond: 0 })).rejects.toThrow(
      /prefill rate/,
    );
  });

  it('parses --tier-rates over the measured defaults', () => {
    const r = parseTierRates('host=10:0.2,nvme=3');
    expect(r.host).toEqual({ gbps: 10, latencyMs: 0.2 });
    expect(r.nvme).toEqual({ gbps: 3, latencyMs: 0 });
    expect(r.file).toEqual({ gbps: 1.87, latencyMs: 0.1 });
    expect(() => parseTierRates('host=fast')).toThrow(KvtierError);
    expect(() => parseTierRates('host=0')).toThrow(KvtierError);
  });

  it('takes nearest-rank percentiles', () => {
    const p = percentiles(Float64Array.from({ length: 100 }, (_, i) => 100 - i));
    expect(p).toEqual({ p50: 50, p90: 90, p99: 99, mean: 50.5 });
  });
});
