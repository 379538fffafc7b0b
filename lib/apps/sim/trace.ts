/**
 * Trace model shared by the readers and the replay. A trace is a sequence of requests, each a
 * chain of block keys (equal key ⇒ equal prefix up to that block) at a time in milliseconds.
 * Keys are numbers (safe integers); readers namespace ids that are only unique per session.
 */
import { KvtierError } from '../../index.js';

export interface TraceRequest {
  /** Milliseconds since the trace began; never decreases along a trace. */
  time: number;
  /**
   * The request's block keys, root first. Valid only until the reader yields the next request
   * (readers may reuse the array): copy it to keep it.
   */
  keys: ArrayLike<number>;
  /** Number of keys used from `keys` (it may be a longer, reused buffer). */
  length: number;
  /** Input (prompt) tokens, when the trace says; for prefill tokens saved. */
  inputTokens: number;
  /** Output tokens, when the trace says. */
  outputTokens: number;
  /** Engine-style priority (0 when the trace has none). */
  priority: number;
  /** Session (conversation) index, or -1 when the trace has none. */
  session: number;
  /**
   * What an engine could tell after this request, when the trace records it (kv-cache-tester):
   * 'soon' (it stopped for a tool call) or 'closed' (the session's last request).
   */
  hint?: 'soon' | 'closed' | undefined;
}

export type TraceFormat = 'mooncake' | 'kvcache-tester' | 'kvtier';
export const traceFormats: readonly TraceFormat[] = ['mooncake', 'kvcache-tester', 'kvtier'];

export type OnError = 'skip' | 'stop';

export interface TraceReadOptions {
  /** What to do with a malformed line or file: stop with an error (default) or skip it. */
  onError?: OnError;
  /** Called once per skipped line or file with the reason (file:line: what). */
  onSkip?: (message: string) => void;
  /** kv-cache-tester folders: sessions side by side from t=0 (default) or one after another. */
  merge?: 'concurrent' | 'sequential';
}

/** A trace that can be read more than once (the simulator reads ahead for Belady). */
export interface Trace {
  readonly format: TraceFormat;
  readonly path: string;
  /** Tokens per block, when the trace says (Mooncake 512, kv-cache-tester 64). */
  readonly blockTokens: number | undefined;
  /** Keys lie in [0, keySpace) when known (after open()): lets the replay use flat arrays. */
  readonly keySpace: number | undefined;
  /** Loads what must be loaded before keySpace is known (optional). */
  open?(): Promise<unknown>;
  /** Lines or files skipped so far (with onError 'skip'). */
  readonly skipped: number;
  /** Streams the requests in replay order. */
  requests(): AsyncIterable<TraceRequest>;
}

export function badTrace(where: string, what: string): KvtierError {
  return new KvtierError('KVTIER_BAD_ARGUMENT', `${where}: ${what}`);
}

/** Checks a parsed hash-id list; returns the message for a bad one. */
export function checkIds(ids: unknown): string | undefined {
  if (!Array.isArray(ids)) return 'hash ids are not an array';
  for (let i = 0; i < ids.length; i++) {
    const v: unknown = ids[i];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
      return `hash id ${i} is not a non-negative integer: ${JSON.stringify(v)}`;
    }
  }
  return undefined;
}
