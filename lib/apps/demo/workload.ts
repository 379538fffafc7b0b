/**
 * A seeded multi-turn agent workload for `kvtier demo`: the request stream an inference engine in
 * front of coding or research agents sees.
 *
 * - A few long system prompts (instructions and tool definitions) shared by every session.
 * - Sessions whose context grows turn by turn: each request's prompt is the previous request's
 *   prompt, its reply, and the next input (a tool result, or a user message).
 * - Sub-agents: a session forks children whose context starts with the parent's whole context so
 *   far plus a task; the parent waits for them and then continues with their summaries.
 * - Idle gaps on a logical clock: quick tool calls, users thinking, users coming back after
 *   minutes away. Several sessions are active at once, so while one waits, the others push its
 *   blocks down the tiers.
 *
 * Everything comes from one PRNG seeded with `seed`, and generation stops after `requests`
 * requests without looking ahead, so a longer run begins with exactly the requests of a shorter
 * one: a second `kvtier demo` with the same seed asks for what the first one stored.
 */
import { KvtierError } from '../../index.js';

export interface WorkloadOptions {
  /** PRNG seed, a 32-bit unsigned integer. */
  seed: number;
  /** Requests to generate. */
  requests: number;
  /** Distinct system prompts shared by the sessions (default 4). */
  systemPrompts?: number;
  /** Root sessions active at once (default 6). */
  concurrency?: number;
  /** Token ids are drawn from [0, vocab) (default 128256, Llama 3's vocabulary). */
  vocab?: number;
  /** A session ends once its context reaches this many tokens (default 24576). */
  maxContextTokens?: number;
  /** Chance that a root session's turn forks sub-agents (default 0.15). */
  subagentChance?: number;
}

export type RequestKind =
  /** The first request of a root session: system prompt and a user's task. */
  | 'start'
  /** The agent continues after a tool result. */
  | 'tool'
  /** A user's next message after some thought. */
  | 'user'
  /** A user comes back after a long idle gap. */
  | 'resume'
  /** The first request of a sub-agent: the parent's context plus a task. */
  | 'subagent'
  /** A parent continues with its sub-agents' summaries. */
  | 'join';

export interface DemoRequest {
  /** Position in the stream, from 0. */
  index: number;
  /** Logical time of arrival, in milliseconds from the start of the run. */
  time: number;
  /** Session id, from 0 in order of creation. */
  session: number;
  /** For a sub-agent, its parent's session id; -1 for a root session. */
  parent: number;
  /** Which system prompt the session (or its root) started from. */
  systemPrompt: number;
  /** The request's turn within its session, from 0. */
  turn: number;
  kind: RequestKind;
  /** Logical time since the session's previous activity (its reply, or its children's). */
  idleMs: number;
  /** The prompt, then the reply the model generates: prompt + reply token ids. */
  tokens: Uint32Array;
  /** Tokens of the prompt (the rest of `tokens` is the reply). */
  promptTokens: number;
  /** Leading tokens of the system prompt. */
  systemTokens: number;
  /**
   * Leading tokens the session shares with earlier ones: the system prompt for a root session,
   * the parent's context at the fork for a sub-agent.
   */
  inheritedTokens: number;
}

export interface Workload {
  options: Required<WorkloadOptions>;
  requests: DemoRequest[];
  systemPrompts: Uint32Array[];
  /** Sessions that issued at least one request, sub-agents included. */
  sessions: number;
  subagents: number;
}

export const WORKLOAD_DEFAULTS = {
  systemPrompts: 4,
  concurrency: 6,
  vocab: 128256,
  maxContextTokens: 24576,
  subagentChance: 0.15,
} as const;

const MAX_REQUESTS = 1_000_000;

/** xoshiro128**, seeded through splitmix32: small, fast, and the same on every machine. */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number) {
    let x = seed >>> 0;
    const next = (): number => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
  }

  /** A uniform 32-bit unsigned integer. */
  u32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    this.s0 >>>= 0;
    this.s1 >>>= 0;
    this.s2 >>>= 0;
    return result;
  }

  /** Uniform in [0, 1). */
  float(): number {
    return this.u32() / 2 ** 32;
  }

  /** Uniform integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.float() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.float() < p;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** A token sequence that grows in place; views of its past stay valid (it only appends). */
class Tokens {
  private buf: Uint32Array;
  length = 0;

  constructor(capacity: number) {
    this.buf = new Uint32Array(Math.max(16, capacity));
  }

  append(src: Uint32Array): void {
    this.reserve(src.length);
    this.buf.set(src, this.length);
    this.length += src.length;
  }

  appendRandom(rng: Rng, n: number, vocab: number): void {
    this.reserve(n);
    for (let i = 0; i < n; i++) this.buf[this.length + i] = rng.u32() % vocab;
    this.length += n;
  }

  /** The first n tokens (a view: later appends never change it). */
  prefix(n = this.length): Uint32Array {
    return this.buf.subarray(0, n);
  }

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    // Growing copies into a new buffer; views of the old one keep their (unchanging) prefix.
    const next = new Uint32Array(Math.max(this.length + n, this.buf.length * 2));
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
  }
}

interface Session {
  id: number;
  parent: Session | undefined;
  systemPrompt: number;
  systemTokens: number;
  inheritedTokens: number;
  tokens: Tokens;
  turns: number;
  turn: number;
  /** When the session last did something (its last reply ended, or its children returned). */
  lastActive: number;
  nextKind: RequestKind;
  children: number;
  /** Summaries the children bring back (token counts), appended when the last one ends. */
  summaries: number[];
  used: boolean;
}

interface Event {
  time: number;
  seq: number;
  session: Session;
}

/** A small binary heap of events by (time, seq): deterministic order for equal times. */
class EventQueue {
  private readonly heap: Event[] = [];

  get size(): number {
    return this.heap.length;
  }

  push(e: Event): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  pop(): Event | undefined {
    const h = this.heap;
    if (h.length === 0) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l]!, h[m]!)) m = l;
        if (r < h.length && before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}

function before(a: Event, b: Event): boolean {
  return a.time < b.time || (a.time === b.time && a.seq < b.seq);
}

function checkInteger(value: number, what: string, min: number, max: number): void {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${what} must be an integer from ${min} to ${max}, got ${value}`,
    );
  }
}

/** Generates the workload: deterministic for a given seed and options. */
export function generateWorkload(options: WorkloadOptions): Workload {
  const o: Required<WorkloadOptions> = { ...WORKLOAD_DEFAULTS, ...options };
  checkInteger(o.seed, 'seed', 0, 0xffffffff);
  checkInteger(o.requests, 'requests', 1, MAX_REQUESTS);
  checkInteger(o.systemPrompts, 'systemPrompts', 1, 1000);
  checkInteger(o.concurrency, 'concurrency', 1, 10_000);
  checkInteger(o.vocab, 'vocab', 2, 0xffffffff);
  checkInteger(o.maxContextTokens, 'maxContextTokens', 4096, 1 << 24);
  if (!(o.subagentChance >= 0 && o.subagentChance <= 1)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `subagentChance must be in [0, 1], got ${o.subagentChance}`,
    );
  }

  const rng = new Rng(o.seed);
  // System prompts: instructions plus tool definitions, 1k to 3k tokens.
  const systemPrompts: Uint32Array[] = [];
  for (let p = 0; p < o.systemPrompts; p++) {
    const t = new Tokens(3072);
    t.appendRandom(rng, rng.int(1024, 3072), o.vocab);
    systemPrompts.push(t.prefix());
  }

  const queue = new EventQueue();
  const requests: DemoRequest[] = [];
  let seq = 0;
  let nextId = 0;
  let subagents = 0;
  const schedule = (session: Session, time: number): void => {
    queue.push({ time, seq: seq++, session });
  };

  const startRoot = (time: number): void => {
    // Popular prompts are used more: prompt p with weight 1/(p+1).
    const weights = systemPrompts.map((_, p) => 1 / (p + 1));
    let r = rng.float() * weights.reduce((a, b) => a + b, 0);
    let systemPrompt = 0;
    while (systemPrompt < weights.length - 1 && r >= weights[systemPrompt]!) {
      r -= weights[systemPrompt]!;
      systemPrompt++;
    }
    const sys = systemPrompts[systemPrompt]!;
    const tokens = new Tokens(8192);
    tokens.append(sys);
    tokens.appendRandom(rng, rng.int(100, 1500), o.vocab); // the user's task
    const session: Session = {
      id: -1,
      parent: undefined,
      systemPrompt,
      systemTokens: sys.length,
      inheritedTokens: sys.length,
      tokens,
      turns: rng.int(3, 12),
      turn: 0,
      lastActive: time,
      nextKind: 'start',
      children: 0,
      summaries: [],
      used: false,
    };
    schedule(session, time);
  };

  for (let i = 0; i < o.concurrency; i++) startRoot(rng.int(0, 3000) * i);

  while (requests.length < o.requests) {
    const event = queue.pop();
    if (!event) break; // cannot happen: every ending root session starts another
    const { session: s, time } = event;
    if (!s.used) {
      s.used = true;
      s.id = nextId++;
      if (s.parent) subagents++;
    }
    const promptTokens = s.tokens.length;
    const reply = rng.int(50, 400);
    s.tokens.appendRandom(rng, reply, o.vocab);
    requests.push({
      index: requests.length,
      time,
      session: s.id,
      parent: s.parent ? s.parent.id : -1,
      systemPrompt: s.systemPrompt,
      turn: s.turn,
      kind: s.nextKind,
      idleMs: time - s.lastActive,
      tokens: s.tokens.prefix(),
      promptTokens,
      systemTokens: s.systemTokens,
      inheritedTokens: s.inheritedTokens,
    });
    // Prefill at ~10k tokens/s, decode at ~40 tokens/s: when the reply is done.
    const done = time + Math.round(promptTokens / 10) + reply * 25;
    s.lastActive = done;
    s.turn++;

    if (s.turn >= s.turns || s.tokens.length >= o.maxContextTokens) {
      endSession(s, done);
      continue;
    }
    if (!s.parent && rng.chance(o.subagentChance)) {
      // Fork 1 to 3 sub-agents from the whole context so far; the parent waits for them.
      const n = rng.int(1, 3);
      s.children = n;
      for (let c = 0; c < n; c++) {
        const tokens = new Tokens(s.tokens.length + 4096);
        tokens.append(s.tokens.prefix());
        const forkedAt = tokens.length;
        tokens.appendRandom(rng, rng.int(50, 300), o.vocab); // the sub-task
        const child: Session = {
          id: -1,
          parent: s,
          systemPrompt: s.systemPrompt,
          systemTokens: s.systemTokens,
          inheritedTokens: forkedAt,
          tokens,
          turns: rng.int(2, 5),
          turn: 0,
          lastActive: done,
          nextKind: 'subagent',
          children: 0,
          summaries: [],
          used: false,
        };
        schedule(child, done + rng.int(100, 1000));
      }
      continue;
    }
    const r = rng.float();
    if (r < 0.55) {
      s.tokens.appendRandom(rng, rng.int(100, 1500), o.vocab); // a tool's output
      s.nextKind = 'tool';
      schedule(s, done + rng.int(200, 3000));
    } else if (r < 0.9) {
      s.tokens.appendRandom(rng, rng.int(20, 400), o.vocab);
      s.nextKind = 'user';
      schedule(s, done + rng.int(5_000, 90_000));
    } else {
      s.tokens.appendRandom(rng, rng.int(20, 400), o.vocab);
      s.nextKind = 'resume';
      schedule(s, done + rng.int(3 * 60_000, 30 * 60_000));
    }
  }

  function endSession(s: Session, time: number): void {
    const parent = s.parent;
    if (!parent) {
      startRoot(time + rng.int(0, 5000)); // another user arrives
      return;
    }
    parent.summaries.push(rng.int(100, 400));
    if (--parent.children > 0) return;
    for (const n of parent.summaries) parent.tokens.appendRandom(rng, n, o.vocab);
    parent.summaries = [];
    parent.nextKind = 'join';
    parent.lastActive = Math.max(parent.lastActive, time);
    schedule(parent, time + rng.int(100, 1000));
  }

  return { options: o, requests, systemPrompts, sessions: nextId, subagents };
}

/**
 * Distinct blocks of `blockTokens` tokens the workload stores, running total after each request
 * (what a cache with room for everything would hold). Counted from the workload's structure:
 * a system prompt's full blocks once, then each session's blocks past what it inherited.
 */
export function distinctBlocks(workload: Workload, blockTokens: number): number[] {
  const seenPrompts = new Set<number>();
  const counted = new Map<number, number>();
  const out: number[] = [];
  let total = 0;
  for (const r of workload.requests) {
    let have = counted.get(r.session);
    if (have === undefined) {
      if (r.parent < 0 && !seenPrompts.has(r.systemPrompt)) {
        seenPrompts.add(r.systemPrompt);
        total += Math.floor(r.systemTokens / blockTokens);
      }
      have = Math.floor(r.inheritedTokens / blockTokens);
    }
    const blocks = Math.floor(r.tokens.length / blockTokens);
    if (blocks > have) {
      total += blocks - have;
      have = blocks;
    }
    counted.set(r.session, have);
    out.push(total);
  }
  return out;
}
