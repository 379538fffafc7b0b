/**
 * kv-cache-tester traces (github.com/callanjfox/kv-cache-tester): a folder of `*.json` or
 * `*.json.gz` files, one session each. Requests `{t (s), in, out, hash_ids, ...}` may nest
 * sub-agents `{type: "subagent", t, requests: [...]}` whose inner `t` counts from the spawn time.
 * Hash ids are local to a session: each session's ids are moved into a range of their own.
 *
 * Sessions are loaded one at a time and kept in a compact form: each request stores only the ids
 * past the prefix it shares with the session's previous request (agentic sessions grow one chain),
 * so memory follows the trace's distinct content, not its 48 M accesses. The replay then merges the
 * sessions by request time, every session starting at t=0 (`concurrent`), or plays them one after
 * another (`sequential`).
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzip as gunzipCb } from 'node:zlib';

import { KvtierError } from '../../index.js';
import {
  badTrace,
  checkIds,
  type Trace,
  type TraceReadOptions,
  type TraceRequest,
} from './trace.js';

const gunzip = promisify(gunzipCb);

interface FlatRequest {
  time: number;
  ids: number[];
  inputTokens: number;
  outputTokens: number;
  /** The request stopped for a tool call (`stop: "tool_use"`): the engine would know. */
  tool: boolean;
  order: number;
}

/** One session in compact form. */
interface Session {
  file: string;
  /** Added to every local id. */
  base: number;
  count: number;
  times: Float64Array;
  /** Per request: input tokens, output tokens. */
  tokens: Int32Array;
  /** Per request: 1 when it stopped for a tool call, 2 for the session's last request. */
  hints: Uint8Array;
  /** Per request: shared prefix length, tail length, tail ids (local). */
  data: Int32Array;
}

class GrowInt32 {
  a = new Int32Array(1024);
  n = 0;
  push(v: number): void {
    if (this.n === this.a.length) {
      const b = new Int32Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = v;
  }
  done(): Int32Array {
    return this.a.slice(0, this.n);
  }
}

function flatten(
  requests: unknown,
  base: number,
  out: FlatRequest[],
  where: string,
  problems: string[],
): void {
  if (!Array.isArray(requests)) {
    problems.push(`${where}: "requests" is not an array`);
    return;
  }
  for (let i = 0; i < requests.length; i++) {
    const r = requests[i] as Record<string, unknown> | null;
    const here = `${where}[${i}]`;
    if (typeof r !== 'object' || r === null) {
      problems.push(`${here}: not an object`);
      continue;
    }
    const t = r.t;
    if (typeof t !== 'number' || !Number.isFinite(t) || t < 0) {
      problems.push(`${here}: "t" is missing or not a non-negative number`);
      continue;
    }
    if (r.type === 'subagent') {
      flatten(r.requests, base + t, out, `${here}.requests`, problems);
      continue;
    }
    const bad = checkIds(r.hash_ids);
    if (bad) {
      problems.push(`${here}: ${bad}`);
      continue;
    }
    out.push({
      time: (base + t) * 1000,
      ids: r.hash_ids as number[],
      inputTokens: typeof r.in === 'number' ? r.in : 0,
      outputTokens: typeof r.out === 'number' ? r.out : 0,
      tool: r.stop === 'tool_use',
      order: out.length,
    });
  }
}

export class KvCacheTesterTrace implements Trace {
  readonly format = 'kvcache-tester' as const;
  readonly blockTokens = 64;
  skipped = 0;
  keySpace: number | undefined;
  private sessions: Session[] | undefined;

  constructor(
    readonly path: string,
    private readonly options: TraceReadOptions = {},
  ) {}

  /** Session files in name order. */
  static async files(path: string): Promise<string[]> {
    const s = await stat(path);
    if (!s.isDirectory()) return [path];
    const names = (await readdir(path)).filter(
      (n) => n.endsWith('.json') || n.endsWith('.json.gz'),
    );
    names.sort();
    return names.map((n) => join(path, n));
  }

  private async load(): Promise<Session[]> {
    if (this.sessions) return this.sessions;
    const onError = this.options.onError ?? 'stop';
    const files = await KvCacheTesterTrace.files(this.path);
    const sessions: Session[] = [];
    let base = 0;
    // Reading and gunzip run on the thread pool: keep a few files in flight while parsing.
    const fetch = (file: string): Promise<{ buf?: Buffer; error?: Error }> =>
      readFile(file)
        .then((buf) => (file.endsWith('.gz') ? gunzip(buf, { chunkSize: 1 << 20 }) : buf))
        .then(
          (buf) => ({ buf }),
          (error: unknown) => ({
            error: error instanceof Error ? error : new Error(String(error)),
          }),
        );
    const AHEAD = 3;
    const inFlight = files.slice(0, AHEAD).map(fetch);
    for (let fi = 0; fi < files.length; fi++) {
      const file = files[fi]!;
      const got = await inFlight[fi]!;
      if (fi + AHEAD < files.length) inFlight.push(fetch(files[fi + AHEAD]!));
      inFlight[fi] = Promise.resolve({}); // let the buffer go
      const problems: string[] = [];
      let doc: unknown;
      try {
        if (got.error !== undefined) throw got.error;
        doc = JSON.parse(got.buf!.toString('utf8'));
      } catch (e) {
        const what =
          (e as { code?: string }).code === 'Z_BUF_ERROR'
            ? 'truncated gzip data'
            : e instanceof SyntaxError
              ? `malformed JSON (${e.message})`
              : (e as Error).message;
        if (onError === 'stop') throw badTrace(file, what);
        this.skipped++;
        this.options.onSkip?.(`${file}: ${what} (file skipped)`);
        continue;
      }
      const flat: FlatRequest[] = [];
      if (typeof doc !== 'object' || doc === null || !('requests' in doc)) {
        problems.push(`${file}: not a kv-cache-tester session (no "requests")`);
      } else {
        flatten(doc.requests, 0, flat, `${file}: requests`, problems);
      }
      if (problems.length > 0) {
        if (onError === 'stop') throw new KvtierError('KVTIER_BAD_ARGUMENT', problems[0]!);
        this.skipped += problems.length;
        for (const p of problems) this.options.onSkip?.(p);
      }
      if (flat.length === 0) continue;
      flat.sort((a, b) => a.time - b.time || a.order - b.order);
      const data = new GrowInt32();
      const tokens = new Int32Array(flat.length * 2);
      const times = new Float64Array(flat.length);
      const hints = new Uint8Array(flat.length);
      let maxId = -1;
      let prev: number[] = [];
      for (let i = 0; i < flat.length; i++) {
        const r = flat[i]!;
        times[i] = r.time;
        hints[i] = i === flat.length - 1 ? 2 : r.tool ? 1 : 0;
        tokens[2 * i] = r.inputTokens;
        tokens[2 * i + 1] = r.outputTokens;
        const ids = r.ids;
        let shared = 0;
        const lim = Math.min(prev.length, ids.length);
        while (shared < lim && prev[shared] === ids[shared]) shared++;
        data.push(shared);
        data.push(ids.length - shared);
        for (let j = shared; j < ids.length; j++) {
          const id = ids[j]!;
          if (id > maxId) maxId = id;
          data.push(id);
        }
        prev = ids;
      }
      if (maxId > 0x3fffffff) throw badTrace(file, `hash id ${maxId} is too large for a local id`);
      sessions.push({ file, base, count: flat.length, times, tokens, hints, data: data.done() });
      base += maxId + 1;
    }
    this.keySpace = base;
    this.sessions = sessions;
    return sessions;
  }

  /** Loads every session (once) and returns how many were kept. */
  async open(): Promise<number> {
    return (await this.load()).length;
  }

  async *requests(): AsyncGenerator<TraceRequest> {
    const sessions = await this.load();
    if ((this.options.merge ?? 'concurrent') === 'sequential') {
      yield* this.sequential(sessions);
    } else {
      yield* this.concurrent(sessions);
    }
  }

  private *sequential(sessions: Session[]): Generator<TraceRequest> {
    const req = newRequest();
    let offset = 0;
    for (let s = 0; s < sessions.length; s++) {
      const c = new Cursor(sessions[s]!, s);
      let end = offset;
      while (c.next < c.session.count) {
        const time = offset + c.session.times[c.next]!;
        c.advance(req);
        req.time = time;
        end = time;
        yield req;
      }
      offset = end;
    }
  }

  private *concurrent(sessions: Session[]): Generator<TraceRequest> {
    const req = newRequest();
    // A binary heap of cursors ordered by (next request time, session index).
    const heap: Cursor[] = sessions.map((s, i) => new Cursor(s, i));
    const less = (a: Cursor, b: Cursor): boolean =>
      a.time < b.time || (a.time === b.time && a.index < b.index);
    const down = (i: number): void => {
      const n = heap.length;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) return;
        const r = l + 1;
        const m = r < n && less(heap[r]!, heap[l]!) ? r : l;
        if (!less(heap[m]!, heap[i]!)) return;
        [heap[m], heap[i]] = [heap[i]!, heap[m]!];
        i = m;
      }
    };
    for (let i = (heap.length >> 1) - 1; i >= 0; i--) down(i);
    while (heap.length > 0) {
      const c = heap[0]!;
      c.advance(req);
      yield req;
      if (c.next >= c.session.count) {
        const last = heap.pop()!;
        if (heap.length > 0) {
          heap[0] = last;
          down(0);
        }
      } else {
        down(0);
      }
    }
  }
}

function newRequest(): TraceRequest {
  return { time: 0, keys: [], length: 0, inputTokens: 0, outputTokens: 0, priority: 0, session: 0 };
}

/** Reads one session's requests back out of its compact form. */
class Cursor {
  next = 0;
  private pos = 0;
  private readonly keys: number[] = [];
  time: number;

  constructor(
    readonly session: Session,
    readonly index: number,
  ) {
    this.time = session.count > 0 ? session.times[0]! : Infinity;
  }

  advance(req: TraceRequest): void {
    const s = this.session;
    const d = s.data;
    const shared = d[this.pos]!;
    const tail = d[this.pos + 1]!;
    this.pos += 2;
    const keys = this.keys;
    const base = s.base;
    for (let j = 0; j < tail; j++) keys[shared + j] = base + d[this.pos + j]!;
    this.pos += tail;
    const i = this.next++;
    req.time = this.time;
    req.keys = keys;
    req.length = shared + tail;
    req.inputTokens = s.tokens[2 * i]!;
    req.outputTokens = s.tokens[2 * i + 1]!;
    req.priority = 0;
    req.session = this.index;
    const h = s.hints[i];
    req.hint = h === 1 ? 'soon' : h === 2 ? 'closed' : undefined;
    this.time = this.next < s.count ? s.times[this.next]! : Infinity;
  }
}
