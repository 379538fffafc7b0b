/**
 * JSONL traces: Mooncake's (`{timestamp, input_length, output_length, hash_ids}` per line) and
 * kvtier's own (see docs/policies.md, "Trace format"): an optional header line
 * `{"kvtier":"trace","version":1,"blockTokens":N}`, then one request per line
 * `{"t": ms, "keys": [int, ...], "in"?: tokens, "out"?: tokens, "priority"?: int, "session"?: int}`.
 */
import { readLines } from './lines.js';
import {
  badTrace,
  checkIds,
  type Trace,
  type TraceFormat,
  type TraceReadOptions,
  type TraceRequest,
} from './trace.js';

interface Parsed {
  time: number;
  keys: number[];
  inputTokens: number;
  outputTokens: number;
  priority: number;
  session: number;
}

function num(v: unknown, fallback: number): number | undefined {
  if (v === undefined || v === null) return fallback;
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

function parseMooncake(o: Record<string, unknown>): Parsed | string {
  const bad = checkIds(o.hash_ids);
  if (bad) return bad;
  const time = num(o.timestamp, NaN);
  if (time === undefined || Number.isNaN(time)) return 'timestamp is missing or not a number';
  const inputTokens = num(o.input_length, 0);
  const outputTokens = num(o.output_length, 0);
  if (inputTokens === undefined || outputTokens === undefined)
    return 'token counts are not numbers';
  return {
    time,
    keys: o.hash_ids as number[],
    inputTokens,
    outputTokens,
    priority: 0,
    session: -1,
  };
}

function parseKvtier(o: Record<string, unknown>): Parsed | string {
  const bad = checkIds(o.keys);
  if (bad) return bad.replace(/^hash id(s?)/, 'key$1');
  const time = num(o.t, NaN);
  if (time === undefined || Number.isNaN(time)) return '"t" is missing or not a number';
  const inputTokens = num(o.in, 0);
  const outputTokens = num(o.out, 0);
  const priority = num(o.priority, 0);
  const session = num(o.session, -1);
  if ([inputTokens, outputTokens, priority, session].includes(undefined)) {
    return '"in", "out", "priority" and "session" must be numbers';
  }
  return {
    time,
    keys: o.keys as number[],
    inputTokens: inputTokens!,
    outputTokens: outputTokens!,
    priority: priority!,
    session: session!,
  };
}

export class JsonlTrace implements Trace {
  readonly keySpace = undefined;
  blockTokens: number | undefined;
  skipped = 0;

  constructor(
    readonly format: Extract<TraceFormat, 'mooncake' | 'kvtier'>,
    readonly path: string,
    private readonly options: TraceReadOptions = {},
  ) {
    this.blockTokens = format === 'mooncake' ? 512 : undefined;
  }

  async *requests(): AsyncGenerator<TraceRequest> {
    const parse = this.format === 'mooncake' ? parseMooncake : parseKvtier;
    const onError = this.options.onError ?? 'stop';
    this.skipped = 0;
    let lastTime = -Infinity;
    const req: TraceRequest = {
      time: 0,
      keys: [],
      length: 0,
      inputTokens: 0,
      outputTokens: 0,
      priority: 0,
      session: -1,
    };
    for await (const line of readLines(this.path)) {
      const text = line.text.trim();
      if (text.length === 0) continue;
      let problem: string | undefined;
      let parsed: Parsed | undefined;
      let o: unknown;
      try {
        o = JSON.parse(text);
      } catch (e) {
        problem = line.last
          ? 'truncated line (the file ends inside it)'
          : `malformed JSON (${(e as Error).message})`;
      }
      if (problem === undefined) {
        if (typeof o !== 'object' || o === null || Array.isArray(o)) {
          problem = 'not a JSON object';
        } else if (this.format === 'kvtier' && (o as { kvtier?: unknown }).kvtier === 'trace') {
          const h = o as { version?: unknown; blockTokens?: unknown };
          if (h.version !== 1) problem = `unsupported kvtier trace version ${String(h.version)}`;
          else if (h.blockTokens !== undefined) {
            if (typeof h.blockTokens !== 'number' || !(h.blockTokens > 0)) {
              problem = 'blockTokens must be a positive number';
            } else this.blockTokens = h.blockTokens;
          }
          if (problem === undefined) continue;
        } else {
          const r = parse(o as Record<string, unknown>);
          if (typeof r === 'string') problem = r;
          else if (r.time < lastTime) problem = `time goes backwards (${r.time} after ${lastTime})`;
          else parsed = r;
        }
      }
      if (parsed === undefined) {
        const where = `${this.path}:${line.number}`;
        if (onError === 'stop') throw badTrace(where, problem ?? 'bad line');
        this.skipped++;
        this.options.onSkip?.(`${where}: ${problem ?? 'bad line'}`);
        continue;
      }
      lastTime = parsed.time;
      req.time = parsed.time;
      req.keys = parsed.keys;
      req.length = parsed.keys.length;
      req.inputTokens = parsed.inputTokens;
      req.outputTokens = parsed.outputTokens;
      req.priority = parsed.priority;
      req.session = parsed.session;
      yield req;
    }
  }
}

/** One line of kvtier's own trace format (what `kvtier demo` can write). */
export function formatKvtierRequest(r: {
  time: number;
  keys: readonly number[];
  inputTokens?: number;
  outputTokens?: number;
  priority?: number;
  session?: number;
}): string {
  const o: Record<string, unknown> = { t: r.time, keys: r.keys };
  if (r.inputTokens !== undefined) o.in = r.inputTokens;
  if (r.outputTokens !== undefined) o.out = r.outputTokens;
  if (r.priority !== undefined) o.priority = r.priority;
  if (r.session !== undefined) o.session = r.session;
  return JSON.stringify(o);
}

/** The header line of kvtier's own trace format. */
export function formatKvtierHeader(blockTokens?: number): string {
  return JSON.stringify(
    blockTokens === undefined
      ? { kvtier: 'trace', version: 1 }
      : { kvtier: 'trace', version: 1, blockTokens },
  );
}
