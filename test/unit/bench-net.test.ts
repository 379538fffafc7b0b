import { describe, expect, it } from 'vitest';

import { findIperf, formatNetBench, runNetBench } from '../../lib/apps/bench/net-bench.js';
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
      // Every timed pass moved exactly the configured bytes, acknowledged by the server.
      const configured = r.blockSize === 256 << 10 ? 8 << 20 : 200 * (16 << 10);
      expect(r.bytes).toEqual([configured]);
      // One repetition: the row is that repetition's numbers, each derived from the same pass.
      expect(r.runs).toHaveLength(1);
      expect(r.gbps).toBe(r.runs[0]);
      expect(r.gbps).toBeGreaterThan(0);
      expect((r.opsPerSec * r.blockSize) / 1e9 / r.gbps).toBeCloseTo(1, 9);
      expect(r.p99Us).toBeGreaterThanOrEqual(r.p50Us);
      if (withIperf) {
        // The ratio is this run's rate over the iperf3 run of the same report (the one iperf3
        // run follows the large-block passes; the small-block rows share it).
        expect(r.peer).toBe('iperf3');
        expect('runs' in report.iperf3).toBe(true);
        const iperfRuns = 'runs' in report.iperf3 ? report.iperf3.runs : [];
        expect(iperfRuns).toHaveLength(1);
        expect(r.peerGbps).toBe(iperfRuns[0]);
        expect(r.ratio).toBeCloseTo(r.gbps / iperfRuns[0]!, 9);
      }
    }
    if (withIperf) {
      // What --json prints names the peer and where it came from.
      const json = JSON.parse(JSON.stringify(report)) as typeof report;
      expect(json.iperf3).toMatchObject({ path: expect.stringMatching(/iperf3$/) as unknown });
      expect(json.rows.every((r) => r.peer === 'iperf3' && typeof r.peerGbps === 'number')).toBe(
        true,
      );
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
