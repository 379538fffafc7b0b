/** `kvtier bench engine` in miniature: it runs both sides and checks the bytes it loaded. */
import { describe, expect, it } from 'vitest';

import { runEngineBench } from '../../lib/apps/bench/engine-bench.js';

describe('kvtier bench engine', () => {
  it('reports save and load for both layouts, channel next to the Warehouse', async () => {
    const report = await runEngineBench({ blocks: 16, batch: 4, reps: 1, numLayers: 1 });
    expect(report.rows.map((r) => `${r.form}/${r.op}`)).toEqual([
      'block-major/save',
      'block-major/load',
      'kv-first/save',
      'kv-first/load',
    ]);
    for (const r of report.rows) {
      expect(r.blockBytes).toBe(65536);
      expect(r.channel.blocksPerSec).toBeGreaterThan(0);
      expect(r.warehouse.blocksPerSec).toBeGreaterThan(0);
      expect(r.ratio).toBeCloseTo(r.channel.GBps / r.warehouse.GBps);
      expect(r.verified).toBe(true);
    }
  });
});
