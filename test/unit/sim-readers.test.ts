import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

import { afterAll, describe, expect, it } from 'vitest';

import { isKvtierError } from '../../lib/core/errors.js';
import { openTrace } from '../../lib/apps/sim/open.js';
import type { TraceReadOptions } from '../../lib/apps/sim/trace.js';
import { tempDir } from '../helpers.js';

const dir = tempDir('kvtier-sim-readers-');
afterAll(() => dir.remove());
let n = 0;
function file(name: string, text: string): string {
  const p = join(dir.path, `${n++}-${name}`);
  writeFileSync(p, text);
  return p;
}

async function collect(
  path: string,
  options: TraceReadOptions = {},
  format: 'auto' | 'mooncake' | 'kvtier' | 'kvcache-tester' = 'auto',
): Promise<{ time: number; keys: number[]; session: number }[]> {
  const t = await openTrace(path, format, options);
  const out = [];
  for await (const r of t.requests()) {
    out.push({ time: r.time, keys: Array.from(r.keys).slice(0, r.length), session: r.session });
  }
  return out;
}

async function rejects(p: Promise<unknown>, message: RegExp): Promise<void> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(isKvtierError(e, 'KVTIER_BAD_ARGUMENT'), String(e)).toBe(true);
  expect((e as Error).message).toMatch(message);
}

const line = (t: number, ids: number[]): string =>
  JSON.stringify({ timestamp: t, input_length: ids.length * 512, output_length: 1, hash_ids: ids });

describe('Mooncake JSONL', () => {
  it('reads requests in order', async () => {
    const p = file('ok.jsonl', `${line(0, [1, 2])}\n\n${line(5, [1, 3])}\n`);
    expect(await collect(p)).toEqual([
      { time: 0, keys: [1, 2], session: -1 },
      { time: 5, keys: [1, 3], session: -1 },
    ]);
  });

  it('stops at a malformed line with its file and line number', async () => {
    const p = file('bad.jsonl', `${line(0, [1])}\n{"timestamp": 1, "hash_ids": [1, "x"]}\n`);
    await rejects(collect(p), /bad\.jsonl:2: hash id 1 is not a non-negative integer/);
    const q = file('json.jsonl', `${line(0, [1])}\n${line(1, [2])}\n{not json\n`);
    await rejects(collect(q), /json\.jsonl:3: malformed JSON/);
  });

  it('calls a last line without a newline truncated', async () => {
    const p = file('trunc.jsonl', `${line(0, [1])}\n${line(1, [2]).slice(0, 20)}`);
    await rejects(collect(p), /trunc\.jsonl:2: truncated line/);
  });

  it('skips bad lines with --on-error skip and reports each', async () => {
    const skipped: string[] = [];
    const p = file(
      'skip.jsonl',
      `${line(0, [1])}\n[1,2]\n{"timestamp": 3}\n${line(4, [1, 2])}\n${line(2, [9])}\n{"x`,
    );
    const got = await collect(p, { onError: 'skip', onSkip: (m) => skipped.push(m) });
    expect(got.map((r) => r.keys)).toEqual([[1], [1, 2]]);
    expect(skipped).toHaveLength(4);
    expect(skipped[0]).toMatch(/skip\.jsonl:2: not a JSON object/);
    expect(skipped[2]).toMatch(/:5: time goes backwards/);
    expect(skipped[3]).toMatch(/:6: truncated/);
  });

  it('rejects empty files and unknown formats', async () => {
    await rejects(collect(file('empty.jsonl', '')), /empty/);
    await rejects(collect(file('blank.jsonl', '\n\n  \n')), /empty/);
    await rejects(collect(file('other.jsonl', '{"a": 1}\n')), /unknown trace format/);
    await rejects(collect(join(dir.path, 'missing.jsonl')), /cannot read trace/);
    await rejects(
      openTrace(file('x.jsonl', line(0, [1])), 'parquet' as 'auto'),
      /unknown trace format "parquet"/,
    );
  });
});

describe("kvtier's own JSONL", () => {
  it('reads a header and requests with optional fields', async () => {
    const p = file(
      'own.jsonl',
      [
        JSON.stringify({ kvtier: 'trace', version: 1, blockTokens: 16 }),
        JSON.stringify({ t: 0, keys: [7, 8], priority: 2, session: 1 }),
        JSON.stringify({ t: 3, keys: [7], in: 10, out: 2 }),
      ].join('\n'),
    );
    const t = await openTrace(p);
    expect(t.format).toBe('kvtier');
    const got = [];
    for await (const r of t.requests()) got.push({ ...r, keys: Array.from(r.keys) });
    expect(t.blockTokens).toBe(16);
    expect(got[0]).toMatchObject({ time: 0, keys: [7, 8], priority: 2, session: 1 });
    expect(got[1]).toMatchObject({ time: 3, keys: [7], inputTokens: 10, outputTokens: 2 });
  });

  it('rejects an unsupported version and bad keys', async () => {
    await rejects(collect(file('v2.jsonl', '{"kvtier":"trace","version":2}\n')), /:1: unsupported/);
    await rejects(
      collect(file('k.jsonl', '{"t":0,"keys":[-1]}\n')),
      /k\.jsonl:1: key 0 is not a non-negative integer/,
    );
  });
});

function session(requests: unknown[]): Buffer {
  return gzipSync(JSON.stringify({ id: 'x', block_size: 64, hash_id_scope: 'local', requests }));
}

describe('kv-cache-tester sessions', () => {
  const folder = join(dir.path, 'sessions');
  mkdirSync(folder);
  // Session A: t=0 [1,2], a sub-agent spawned at t=2 with requests at +1 and +5, t=4 [1,2,3].
  writeFileSync(
    join(folder, 'trace_0001.json.gz'),
    session([
      { t: 0, type: 'n', in: 128, out: 1, hash_ids: [1, 2] },
      {
        type: 'subagent',
        t: 2,
        requests: [
          { t: 1, type: 'n', hash_ids: [5] },
          { t: 5, type: 'n', hash_ids: [5, 6] },
        ],
      },
      { t: 4, type: 'n', hash_ids: [1, 2, 3] },
    ]),
  );
  // Session B (plain JSON): the same local ids mean different blocks.
  writeFileSync(
    join(folder, 'trace_0002.json'),
    JSON.stringify({
      requests: [
        { t: 0, hash_ids: [1] },
        { t: 3, hash_ids: [1, 2] },
      ],
    }),
  );

  it('merges sessions by time from t=0, sub-agents at spawn + t, ids namespaced', async () => {
    const got = await collect(folder);
    // A's ids 0..6 take keys 0..6; B's start at 7.
    expect(got).toEqual([
      { time: 0, keys: [1, 2], session: 0 },
      { time: 0, keys: [8], session: 1 },
      { time: 3000, keys: [5], session: 0 },
      { time: 3000, keys: [8, 9], session: 1 },
      { time: 4000, keys: [1, 2, 3], session: 0 },
      { time: 7000, keys: [5, 6], session: 0 },
    ]);
  });

  it('plays sessions one after another with --merge sequential', async () => {
    const got = await collect(folder, { merge: 'sequential' });
    expect(got.map((r) => [r.time, r.session])).toEqual([
      [0, 0],
      [3000, 0],
      [4000, 0],
      [7000, 0],
      [7000, 1],
      [10000, 1],
    ]);
  });

  it('reports a damaged file, or skips it', async () => {
    const bad = join(dir.path, 'bad-sessions');
    mkdirSync(bad);
    writeFileSync(join(bad, 'trace_0001.json.gz'), session([{ t: 0, hash_ids: [1] }]));
    writeFileSync(
      join(bad, 'trace_0002.json.gz'),
      session([{ t: 0, hash_ids: [1] }]).subarray(0, 20),
    );
    writeFileSync(
      join(bad, 'trace_0003.json'),
      JSON.stringify({ requests: [{ t: 1, hash_ids: 'x' }] }),
    );
    await rejects(collect(bad), /trace_0002\.json\.gz: /);
    const skipped: string[] = [];
    const got = await collect(bad, { onError: 'skip', onSkip: (m) => skipped.push(m) });
    expect(got).toHaveLength(1);
    expect(skipped.join('\n')).toMatch(/trace_0002\.json\.gz: .*skipped/);
    expect(skipped.join('\n')).toMatch(
      /trace_0003\.json: requests\[0\]: hash ids are not an array/,
    );
  });
});
