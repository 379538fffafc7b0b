import { describe, expect, it } from 'vitest';

import { findIperf, formatNetBench, runNetBench } from '../../lib/bench/net-bench.js';
import { prerequisite } from '../helpers.js';

describe('kvtier bench net', () => {
  it('finds iperf3 on PATH, or says how to install it', () => {
    expect(findIperf(undefined, '/nonexistent')).toEqual({
      missing: expect.stringMatching(/apt-get install iperf3/) as unknown,
    });
    expect(findIperf(false)).toEqual({ missing: expect.stringMatching(/turned off/) as unknown });
    expect(findIperf('/nonexistent/iperf3')).toEqual({
      missing: '/nonexistent/iperf3 is not an executable file',
    });
  });

  it('starts a server, measures get and put at both block sizes, and reports the iperf3 ratio', async () => {
    const iperf = findIperf(undefined);
    const withIperf = prerequisite(
      'path' in iperf,
      'iperf3 not installed (apt-get install iperf3)',
    );
    const report = await runNetBench({
      blockSize: 256 << 10,
      inflight: 4,
      bytes: 8 << 20,
      smallBlockSize: 16 << 10,
      smallOps: 200,
      reps: 1,
      iperfSeconds: 1,
      ...(withIperf ? {} : { iperf3: false as const }),
    });
    expect(report.startedServer).toBe(true);
    expect(report.transport).toBe('tcp');
    expect(report.rows.map((r) => [r.op, r.blockSize])).toEqual([
      ['get', 256 << 10],
      ['put', 256 << 10],
      ['get', 16 << 10],
      ['put', 16 << 10],
    ]);
    for (const r of report.rows) {
      expect(r.gbps).toBeGreaterThan(0);
      expect(r.opsPerSec).toBeGreaterThan(0);
      expect(r.p99Us).toBeGreaterThanOrEqual(r.p50Us);
      if (withIperf) {
        expect(r.peer).toBe('iperf3');
        expect(r.ratio).toBeGreaterThan(0);
      }
    }
    expect(formatNetBench(report)).toMatch(/ratio/);
  });

  it('refuses --peer without a token file', async () => {
    await expect(
      runNetBench({
        peer: '127.0.0.1:1',
        blockSize: 1 << 20,
        inflight: 1,
        bytes: 1 << 20,
        smallBlockSize: 65536,
        smallOps: 1,
        reps: 1,
        iperf3: false,
        iperfSeconds: 1,
      }),
    ).rejects.toMatchObject({ code: 'KVTIER_BAD_ARGUMENT' });
  });
});
