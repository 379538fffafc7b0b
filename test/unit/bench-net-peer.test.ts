/**
 * `kvtier bench net --peer` against a real, small `kvtier serve`: passes too large for it are
 * either sized to what it holds or refused before anything is timed, never a failure mid-run.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runNetBench } from '../../lib/apps/bench/net-bench.js';
import { tempDir } from '../helpers.js';
import {
  killAll,
  runCli,
  startServe,
  writeToken,
  type ServeProcess,
} from '../peer/serve-process.js';

const BLOCK = 256 << 10;
/** 64 blocks: far fewer than the 256 + 256 a 64 MiB pass needs at once. */
const HOST_BYTES = 16 << 20;

describe('kvtier bench net --peer against a small server', () => {
  const dir = tempDir('kvtier-bench-peer-');
  let serve: ServeProcess;
  let peer: string;
  let tokenFile: string;
  let metrics: string;

  beforeAll(async () => {
    tokenFile = writeToken(dir.path);
    serve = await startServe({
      blockBytes: BLOCK,
      hostBytes: HOST_BYTES,
      tokenFile,
      extra: ['--metrics', '0'],
    });
    peer = `127.0.0.1:${serve.port}`;
    const listening = await serve.waitFor('listening');
    metrics = `http://127.0.0.1:${listening.metricsPort as number}/metrics`;
  });

  afterAll(async () => {
    await serve?.stop();
    killAll();
    dir.remove();
  });

  const common = {
    blockSize: BLOCK,
    inflight: 2,
    smallBlockSize: 16 << 10,
    smallOps: 100,
    reps: 1,
    iperf3: false as const,
  };

  /** Blocks the server holds, from its metrics: a run, refused or not, leaves none behind. */
  const blocksHeld = async (): Promise<number> => {
    const text = await (await fetch(metrics)).text();
    const line = text.split('\n').find((l) => l.startsWith('kvtier_blocks '));
    return Number(line!.split(' ')[1]);
  };

  it('with --bytes asked for, stops before timing anything and names the --bytes that fits', async () => {
    const err = await runNetBench({
      ...common,
      peer,
      tokenFile,
      bytes: 64 << 20,
      fixedBytes: true,
    }).then(
      () => undefined,
      (e: unknown) => e as { code?: string; message: string },
    );
    expect(err?.code).toBe('KVTIER_BAD_ARGUMENT');
    expect(err?.message).toMatch(
      new RegExp(`the peer at ${peer} held only \\d+ blocks of ${BLOCK} bytes`),
    );
    expect(err?.message).toContain('nothing was measured');
    const suggested = /pass --bytes (\d+)(KiB|MiB)/.exec(err!.message);
    expect(suggested).not.toBeNull();
    const bytes = Number(suggested![1]) * (suggested![2] === 'MiB' ? 1 << 20 : 1 << 10);
    expect(bytes).toBeLessThan(HOST_BYTES);
    expect(await blocksHeld()).toBe(0);

    // The size it names runs to the end against the same server.
    const report = await runNetBench({ ...common, peer, tokenFile, bytes, fixedBytes: true });
    expect(report.fitted).toBeUndefined();
    expect(report.rows.map((r) => r.op)).toEqual(['get', 'put']);
    for (const r of report.rows) {
      expect(r.bytes).toEqual([Math.floor(bytes / BLOCK) * BLOCK]);
      expect(r.gbps).toBeGreaterThan(0);
    }
  });

  it('with the default pass size, sizes the passes to what the peer holds and runs them all', async () => {
    const report = await runNetBench({ ...common, peer, tokenFile, bytes: 2 * 2 ** 30 });
    expect(report.fitted).toBeDefined();
    const f = report.fitted!;
    expect(f.requestedBytes).toBe(2 * 2 ** 30);
    expect(f.peerBlocks).toBeGreaterThan(0);
    expect(f.peerBlocks).toBeLessThanOrEqual(HOST_BYTES / BLOCK);
    // get set and put pass together within what it held
    expect(2 * (f.bytes / BLOCK)).toBeLessThanOrEqual(f.peerBlocks);
    for (const r of report.rows) {
      expect(r.bytes).toEqual([f.bytes]);
      expect(r.gbps).toBeGreaterThan(0);
    }
    expect(await blocksHeld()).toBe(0);
  });

  it('from the CLI: refuses --bytes too large with the message, runs the default', async () => {
    const args = [
      'bench',
      'net',
      '--peer',
      peer,
      '--token-file',
      tokenFile,
      '--block-size',
      '256KiB',
      '--inflight',
      '2',
      '--reps',
      '1',
      '--no-iperf3',
    ];
    const refused = await runCli([...args, '--bytes', '64MiB']);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/pass --bytes \d+(KiB|MiB) \(or less\) \[KVTIER_BAD_ARGUMENT\]/);
    expect(refused.stdout).toBe('');

    const ran = await runCli([...args, '--json']);
    expect(ran.stderr).toBe('');
    expect(ran.code).toBe(0);
    const report = JSON.parse(ran.stdout) as {
      fitted: { bytes: number; requestedBytes: number };
      rows: { op: string; bytes: number[] }[];
    };
    expect(report.fitted.requestedBytes).toBe(2 * 2 ** 30);
    expect(report.rows.map((r) => [r.op, r.bytes])).toEqual([
      ['get', [report.fitted.bytes]],
      ['put', [report.fitted.bytes]],
    ]);
  });
});
