/**
 * kvtier as node-llama-cpp's KV store. A context sequence's KV state is cut into fixed-token
 * blocks (state-format.ts) stored under chained prefix keys, so a prefix shared by many sessions
 * is stored once and any session finds the longest part of its prompt that any other computed.
 * llama.cpp offers sequence state only through files here, so state goes through a staging
 * file on tmpfs; its cost is counted in every result.
 */
import { createHash } from 'node:crypto';
import { accessSync, constants } from 'node:fs';
import { readFile, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { KvtierError, isKvtierError } from '../core/errors.js';
import { chainKeys } from '../keys/keys.js';
import { Warehouse, type TierOptions, type WarehouseOptions } from '../warehouse/warehouse.js';
import {
  kvBytesPerToken,
  modelFingerprint,
  type LlamaContextLike,
  type LlamaSequenceLike,
} from './engine.js';
import {
  buildSeqState,
  cutBlocks,
  parseSeqState,
  sameLayout,
  tokenBytes,
  type StateLayout,
} from './state-format.js';

export interface LlamaKvOptions {
  /** Tokens per block (default 64). */
  blockTokens?: number;
  /** Tenant: prefixed to the namespace derived from the model and context. */
  namespace?: string;
  /** Where state files are staged (default /dev/shm when writable, else the temp dir). */
  stagingDir?: string;
  /**
   * The model file, fingerprinted into the namespace (default: the path the model was loaded
   * from, which node-llama-cpp 3.x keeps as the internal _modelPath).
   */
  modelPath?: string;
}

export interface LlamaKvOpenOptions extends LlamaKvOptions {
  tiers: TierOptions[];
  warehouse?: Omit<WarehouseOptions, 'blockBytes' | 'tiers'>;
}

export interface StageCost {
  /** Bytes written to or read from the staging file. */
  bytes: number;
  /** Milliseconds spent writing or reading it (the engine's own load/save is counted apart). */
  ms: number;
}

export interface RestoreResult {
  /** Leading prompt tokens the sequence holds after restore: what need not be prefilled. */
  restoredTokens: number;
  /** Prompt tokens still to evaluate. */
  rest: number[];
  /** Where the restored prefix came from. */
  source: 'warehouse' | 'sequence' | 'none';
  /** Blocks read, and per block the tier index it came from. */
  blocks: number;
  tiers: number[];
  /** The restore failed in the engine (a state it refused): the sequence was cleared instead. */
  failed: boolean;
  ms: { lookup: number; get: number; build: number; load: number; total: number };
  staging: StageCost;
}

export interface StoreResult {
  /** Whole blocks the sequence holds. */
  blocks: number;
  stored: number;
  present: number;
  rejected: number;
  bytes: number;
  /** Why nothing could be stored, when nothing could. */
  skipped?: string;
  ms: { save: number; cut: number; put: number; total: number };
  staging: StageCost;
}

export interface GenerateResult {
  tokens: number[];
  /** From the call to the first generated token, restore included. */
  ttftMs: number;
  restore: RestoreResult;
  store: StoreResult | undefined;
}

export interface LlamaKvStats {
  restores: number;
  restoredTokens: number;
  prefilledTokens: number;
  restoreFailures: number;
  stores: number;
  blocksStored: number;
  unstorable: number;
  stagingBytes: number;
  stagingMs: number;
}

const LAYOUT_FORMAT = 'kvtier-llama-layout-v1';

function defaultStaging(): string {
  try {
    accessSync('/dev/shm', constants.W_OK);
    return '/dev/shm';
  } catch {
    return tmpdir();
  }
}

let stageCounter = 0;

export class LlamaKvCache {
  readonly context: LlamaContextLike;
  readonly warehouse: Warehouse;
  readonly blockTokens: number;
  readonly blockBytes: number;
  /** Keys' namespace: the tenant, the model's fingerprint and the context's KV parameters. */
  readonly namespace: string;
  readonly stagingDir: string;
  private readonly layoutKey: string;
  private layout: StateLayout | undefined;
  /** KV streams of this context: learned from its saves; until one, one per sequence. */
  private nStream: number;
  private readonly owned: boolean;
  private readonly busy = new WeakSet<object>();
  private readonly counters: LlamaKvStats = {
    restores: 0,
    restoredTokens: 0,
    prefilledTokens: 0,
    restoreFailures: 0,
    stores: 0,
    blocksStored: 0,
    unstorable: 0,
    stagingBytes: 0,
    stagingMs: 0,
  };

  /** Opens a Warehouse sized for this context's blocks and attaches to it (closed by close()). */
  static async open(context: LlamaContextLike, options: LlamaKvOpenOptions): Promise<LlamaKvCache> {
    const blockTokens = LlamaKvCache.checkBlockTokens(options.blockTokens);
    const warehouse = await Warehouse.open({
      ...options.warehouse,
      blockBytes: blockTokens * kvBytesPerToken(context),
      tiers: options.tiers,
    });
    return new LlamaKvCache(context, warehouse, options, true);
  }

  private static checkBlockTokens(b: number | undefined): number {
    const blockTokens = b ?? 64;
    if (!Number.isSafeInteger(blockTokens) || blockTokens < 1 || blockTokens > 65536) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', `blockTokens must be 1..65536, got ${b}`);
    }
    return blockTokens;
  }

  constructor(
    context: LlamaContextLike,
    warehouse: Warehouse,
    options: LlamaKvOptions = {},
    owned = false,
  ) {
    this.blockTokens = LlamaKvCache.checkBlockTokens(options.blockTokens);
    const path =
      options.modelPath ?? (context.model as { _modelPath?: unknown })._modelPath ?? undefined;
    if (typeof path !== 'string') {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        'the model file to fingerprint is unknown: pass modelPath',
      );
    }
    this.blockBytes = this.blockTokens * kvBytesPerToken(context);
    if (warehouse.blockBytes !== this.blockBytes) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `the warehouse holds blocks of ${warehouse.blockBytes} bytes; this model and context need ${this.blockBytes} (${this.blockTokens} tokens): a warehouse of another model or block size`,
      );
    }
    this.context = context;
    this.warehouse = warehouse;
    this.owned = owned;
    const params = [
      modelFingerprint(path),
      `ctx=${context.contextSize}`,
      `fa=${String(context.flashAttention)}`,
      `k=${context.kvCacheKeyType}`,
      `v=${context.kvCacheValueType}`,
    ].join(';');
    this.namespace = `${options.namespace ?? ''}\0llama\0${params}`;
    this.layoutKey = createHash('sha256')
      .update(`${LAYOUT_FORMAT}\0${this.namespace}`)
      .digest('hex');
    this.stagingDir = options.stagingDir ?? defaultStaging();
    this.nStream = context.totalSequences ?? 1;
  }

  /** The state layout of this model and context, once a store or a restore has learned it. */
  get stateLayout(): StateLayout | undefined {
    return this.layout;
  }

  stats(): LlamaKvStats {
    return { ...this.counters };
  }

  async close(): Promise<void> {
    if (this.owned) await this.warehouse.close();
  }

  /** Keys of a prompt's whole blocks. */
  keysOf(tokens: readonly number[]): string[] {
    return chainKeys(tokens, { blockTokens: this.blockTokens, namespace: this.namespace }).keys();
  }

  private checkSequence(sequence: LlamaSequenceLike): void {
    if (sequence.disposed) throw new KvtierError('KVTIER_CLOSED', 'the sequence is disposed');
    if (sequence.context !== this.context) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        'the sequence belongs to another context than this cache was made for (its model or KV parameters may differ)',
      );
    }
    if (this.busy.has(sequence)) {
      throw new KvtierError(
        'KVTIER_LOCKED',
        'the sequence is already in use by another restore, store or generate',
      );
    }
  }

  private checkPrompt(prompt: readonly number[]): void {
    if (!Array.isArray(prompt) || prompt.length === 0) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        'the prompt must be a non-empty array of tokens',
      );
    }
    if (prompt.length > this.context.contextSize) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `the prompt has ${prompt.length} tokens, more than the context holds (${this.context.contextSize})`,
      );
    }
    for (const t of prompt) {
      if (!Number.isInteger(t) || t < 0 || t > 0x7fffffff) {
        throw new KvtierError('KVTIER_BAD_ARGUMENT', `not a token id: ${t}`);
      }
    }
  }

  private async withSequence<T>(sequence: LlamaSequenceLike, f: () => Promise<T>): Promise<T> {
    this.checkSequence(sequence);
    this.busy.add(sequence);
    try {
      return await f();
    } finally {
      this.busy.delete(sequence);
    }
  }

  private stagePath(): string {
    return join(this.stagingDir, `kvtier-llama-${process.pid}-${++stageCounter}.state`);
  }

  /** The state layout of this namespace: learned from a store, or read from the warehouse. */
  private async knownLayout(): Promise<StateLayout | undefined> {
    if (this.layout) return this.layout;
    const buf = Buffer.alloc(this.blockBytes);
    const got = await this.warehouse.get([this.layoutKey], buf);
    if (!got.found[0]) return undefined;
    const end = buf.indexOf(0);
    try {
      const rec = JSON.parse(buf.subarray(0, end < 0 ? buf.length : end).toString('utf8')) as {
        format?: string;
        layout?: StateLayout;
      };
      if (rec.format !== LAYOUT_FORMAT || !rec.layout) return undefined;
      if (tokenBytes(rec.layout) * this.blockTokens !== this.blockBytes) return undefined;
      this.layout = rec.layout;
    } catch {
      return undefined;
    }
    return this.layout;
  }

  /**
   * Puts the longest cached prefix of the prompt (at most all but its last token, whose logits
   * the caller needs) into the sequence, and says what is left to evaluate.
   */
  async restore(sequence: LlamaSequenceLike, prompt: readonly number[]): Promise<RestoreResult> {
    this.checkPrompt(prompt);
    return this.withSequence(sequence, () => this.restoreNow(sequence, prompt));
  }

  private async restoreNow(
    sequence: LlamaSequenceLike,
    prompt: readonly number[],
  ): Promise<RestoreResult> {
    const t0 = performance.now();
    const B = this.blockTokens;
    const limit = prompt.length - 1;
    const result: RestoreResult = {
      restoredTokens: 0,
      rest: [],
      source: 'none',
      blocks: 0,
      tiers: [],
      failed: false,
      ms: { lookup: 0, get: 0, build: 0, load: 0, total: 0 },
      staging: { bytes: 0, ms: 0 },
    };
    // What the sequence already holds of this prompt.
    const held = sequence.contextTokens;
    let own = 0;
    while (own < held.length && own < limit && held[own] === prompt[own]) own++;

    const keys = this.keysOf(prompt).slice(0, Math.ceil(limit / B));
    const lookup = this.warehouse.lookup(keys);
    result.ms.lookup = performance.now() - t0;
    let restored = own;
    if (Math.min(lookup.prefix * B, limit) > own && (await this.knownLayout())) {
      const layout = this.layout!;
      const want = keys.slice(0, lookup.prefix);
      const blocks = Buffer.allocUnsafe(want.length * this.blockBytes);
      let t = performance.now();
      const got = await this.warehouse.get(want, blocks);
      result.ms.get = performance.now() - t;
      // A corrupt or vanished block ends the usable prefix there: what follows is recomputed.
      const n = Math.min(got.prefix * B, limit);
      if (n > own) {
        t = performance.now();
        const state = buildSeqState(layout, this.nStream, prompt, n, blocks, B);
        result.ms.build = performance.now() - t;
        const path = this.stagePath();
        t = performance.now();
        await writeFile(path, state);
        result.staging = { bytes: state.length, ms: performance.now() - t };
        t = performance.now();
        try {
          await sequence.loadStateFromFile(path, { acceptRisk: true });
          const now = sequence.contextTokens;
          if (now.length !== n || now.some((tok, i) => tok !== prompt[i])) {
            throw new Error('the sequence holds other tokens than were restored');
          }
          restored = n;
          result.source = 'warehouse';
          result.blocks = got.prefix;
          result.tiers = got.tiers.slice(0, got.prefix);
        } catch {
          // Never continue on a state the engine refused or garbled: start from nothing.
          result.failed = true;
          this.counters.restoreFailures++;
          await sequence.clearHistory();
          restored = 0;
        } finally {
          result.ms.load = performance.now() - t;
          await unlink(path).catch(() => undefined);
        }
      }
    }
    if (result.source !== 'warehouse') {
      const now = sequence.contextTokens;
      if (restored > 0) {
        if (now.length > restored) {
          await sequence.eraseContextTokenRanges([{ start: restored, end: now.length }]);
        }
        result.source = 'sequence';
      } else if (now.length > 0) {
        await sequence.clearHistory();
      }
    }
    result.restoredTokens = restored;
    result.rest = prompt.slice(restored);
    result.ms.total = performance.now() - t0;
    this.counters.restores++;
    this.counters.restoredTokens += restored;
    this.counters.prefilledTokens += prompt.length - restored;
    this.counters.stagingBytes += result.staging.bytes;
    this.counters.stagingMs += result.staging.ms;
    return result;
  }

  /** Saves the sequence's state and stores the whole blocks the warehouse does not hold yet. */
  async store(sequence: LlamaSequenceLike): Promise<StoreResult> {
    return this.withSequence(sequence, () => this.storeNow(sequence));
  }

  private async storeNow(sequence: LlamaSequenceLike): Promise<StoreResult> {
    const t0 = performance.now();
    const B = this.blockTokens;
    const result: StoreResult = {
      blocks: Math.floor(sequence.contextTokens.length / B),
      stored: 0,
      present: 0,
      rejected: 0,
      bytes: 0,
      ms: { save: 0, cut: 0, put: 0, total: 0 },
      staging: { bytes: 0, ms: 0 },
    };
    const done = (skipped?: string): StoreResult => {
      if (skipped !== undefined) {
        result.skipped = skipped;
        this.counters.unstorable++;
      }
      result.ms.total = performance.now() - t0;
      this.counters.stores++;
      this.counters.blocksStored += result.stored;
      this.counters.stagingBytes += result.staging.bytes;
      this.counters.stagingMs += result.staging.ms;
      return result;
    };
    if (result.blocks === 0) return done();
    const keys = this.keysOf(sequence.contextTokens);
    const lookup = this.warehouse.lookup(keys);
    const first = lookup.tiers.indexOf(-1);
    if (first < 0) {
      result.present = keys.length;
      return done();
    }
    const path = this.stagePath();
    let t = performance.now();
    let file: Buffer;
    try {
      await sequence.saveStateToFile(path);
      result.ms.save = performance.now() - t;
      t = performance.now();
      file = await readFile(path);
      result.staging = { bytes: file.length, ms: performance.now() - t };
    } finally {
      await unlink(path).catch(() => undefined);
    }
    t = performance.now();
    let state;
    try {
      state = parseSeqState(file);
    } catch (e) {
      if (isKvtierError(e, 'KVTIER_NOT_AVAILABLE')) return done(e.message);
      throw e;
    }
    this.nStream = state.nStream;
    const layout = state.layout;
    if (!layout) return done('the sequence holds no cells');
    if (tokenBytes(layout) * B !== this.blockBytes) {
      throw new KvtierError(
        'KVTIER_CONFLICT',
        `the engine's state holds ${tokenBytes(layout)} bytes per token, not the ${this.blockBytes / B} this cache was sized for`,
      );
    }
    const known = await this.knownLayout();
    if (known && !sameLayout(known, layout)) {
      throw new KvtierError(
        'KVTIER_CONFLICT',
        'the engine wrote a state of another layout than the one stored for this model and context',
      );
    }
    if (!known) {
      const rec = Buffer.alloc(this.blockBytes);
      const json = Buffer.from(JSON.stringify({ format: LAYOUT_FORMAT, layout }), 'utf8');
      if (json.length >= rec.length) return done('blocks are too small to describe their layout');
      json.copy(rec);
      const put = await this.warehouse.put([this.layoutKey], rec, { priority: 1e9 });
      // Blocks without their layout cannot be read back: store none rather than useless ones.
      if (put.rejected > 0) return done('no room for the layout record');
      this.layout = layout;
    }
    const tokens = state.tokens;
    const have = Math.floor(state.cells / B);
    const count = Math.min(have, keys.length) - first;
    if (count <= 0) return done();
    const blocks = Buffer.allocUnsafe(count * this.blockBytes);
    cutBlocks(state, first, count, B, blocks);
    const stateKeys = this.keysOf(tokens).slice(first, first + count);
    result.ms.cut = performance.now() - t;
    t = performance.now();
    const put = await this.warehouse.put(stateKeys, blocks);
    result.ms.put = performance.now() - t;
    result.stored = put.stored;
    result.present = first + put.present;
    result.rejected = put.rejected;
    result.bytes = put.stored * this.blockBytes;
    return done();
  }

  /**
   * Restores, evaluates the rest of the prompt, generates up to maxTokens greedily, then stores
   * the new blocks (store: false leaves that to the caller). ttftMs ends at the first token.
   */
  async generate(
    sequence: LlamaSequenceLike,
    prompt: readonly number[],
    options: { maxTokens?: number; store?: boolean } = {},
  ): Promise<GenerateResult> {
    this.checkPrompt(prompt);
    const maxTokens = options.maxTokens ?? 1;
    if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', 'maxTokens must be a positive integer');
    }
    const t0 = performance.now();
    let ttftMs = 0;
    const tokens: number[] = [];
    const restore = await this.withSequence(sequence, async () => {
      const r = await this.restoreNow(sequence, prompt);
      for await (const tok of sequence.evaluate(r.rest, { temperature: 0 })) {
        if (tokens.length === 0) ttftMs = performance.now() - t0;
        tokens.push(tok);
        if (tokens.length >= maxTokens) break;
      }
      return r;
    });
    const store = options.store === false ? undefined : await this.store(sequence);
    return { tokens, ttftMs, restore, store };
  }
}
