/**
 * Runs a demo workload through a real Warehouse, the way an inference engine would:
 *
 *   tokens → chainKeys → lookup (how much of the prompt is cached) → get that prefix (every byte
 *   checked against the bytes its key implies) → "prefill" the rest of the prompt and "decode"
 *   the reply (generate their bytes from their keys) → put them.
 *
 * Requests run one at a time on a logical clock (each request's arrival time is the warehouse's
 * `now`), so a run is fast and its placement decisions repeat exactly. Within a request, the next
 * batch's I/O runs on kvtier's threads while this thread checks or generates the current one.
 *
 * A block that comes back with wrong bytes stops the run with KVTIER_CORRUPT: the warehouse
 * promises to drop a corrupt block (a miss, counted), never to return it.
 */
import {
  chainKeys,
  type GetResult,
  type Key,
  KvtierError,
  type PutResult,
  Region,
  type TierStats,
  Warehouse,
  type WarehouseStats,
} from '../../index.js';
import { abortError } from '../../internal.js';
import { checkBlock, fillBlock } from './content.js';
import type { DemoRequest, Workload } from './workload.js';

export interface DemoRunOptions {
  /** The file tier's directory. */
  dir: string;
  blockTokens: number;
  blockBytes: number;
  hostBytes: number;
  fileBytes: number;
  workload: Workload;
  /** Bytes per get/put batch (default 32 MiB, at least one block). */
  batchBytes?: number;
  signal?: AbortSignal;
  /** Called after each request. */
  onProgress?: (progress: DemoProgress) => void;
}

export interface DemoProgress {
  done: number;
  total: number;
  hitRate: number;
  bytesMoved: number;
  seconds: number;
}

export interface DemoTierSummary extends TierStats {
  /** Prompt blocks this tier served to requests (part of a usable cached prefix). */
  served: number;
  /** served / prompt blocks asked for. */
  hitRate: number;
}

export interface FirstRequest {
  promptBlocks: number;
  hitBlocks: number;
  /** Prompt blocks served, by tier name. */
  byTier: Record<string, number>;
}

export interface DemoResult {
  requests: number;
  /** Full blocks of prompt over all requests: what an engine without a cache would prefill. */
  promptBlocks: number;
  /** Prompt blocks served from some tier as part of a cached prefix. */
  hitBlocks: number;
  /** hitBlocks / promptBlocks, in [0, 1]. */
  hitRate: number;
  tiers: DemoTierSummary[];
  /** Blocks read back and checked byte for byte. */
  verifiedBlocks: number;
  /** Blocks the warehouse found corrupt (checksum) and dropped: misses, never returned. */
  corruptBlocks: number;
  /** Blocks generated (prefilled or decoded) and handed to put. */
  computedBlocks: number;
  /** Blocks put could not place (every candidate pinned), or failed to write. */
  rejectedBlocks: number;
  /** Bytes every tier took in and gave out: puts, reads, promotions, demotions. */
  bytesMoved: number;
  /** Bytes the engine got back from get(). */
  bytesRead: number;
  /** Bytes the engine handed to put(). */
  bytesWritten: number;
  seconds: number;
  /** bytesMoved per second, in GB/s (10^9). */
  gbps: number;
  /** Prompt tokens over all requests. */
  prefillTokens: number;
  /** Prompt tokens not recomputed: hit blocks × blockTokens. */
  prefillTokensSaved: number;
  /** Whether the warehouse held blocks when it opened (a file tier from an earlier run). */
  warmStart: boolean;
  blocksAtOpen: number;
  blocksAtEnd: number;
  firstRequest: FirstRequest | undefined;
  warehouse: Omit<WarehouseStats, 'tiers'>;
}

const DEFAULT_BATCH_BYTES = 32 * 2 ** 20;

export async function runDemo(options: DemoRunOptions): Promise<DemoResult> {
  const { blockTokens: bt, blockBytes: bs, workload, signal } = options;
  const batch = Math.max(1, Math.floor((options.batchBytes ?? DEFAULT_BATCH_BYTES) / bs));
  let clock = 0;
  const warehouse = await Warehouse.open({
    blockBytes: bs,
    tiers: [
      { kind: 'host', bytes: options.hostBytes },
      { kind: 'file', dir: options.dir, bytes: options.fileBytes },
    ],
    // Every put lands in the file tier too (as LMCache stores to every backend): what a run
    // computed survives it, however hot it was in host memory when the run ended.
    writeThrough: true,
    now: () => clock,
  });
  let region: Region | undefined;
  try {
    region = Region.allocate(2 * batch * bs);
    const buffers = [0, 1].map((i) => Buffer.from(region!.buffer, i * batch * bs, batch * bs));
    const blocksAtOpen = warehouse.stats().blocks;
    const tierNames = warehouse.stats().tiers.map((t) => t.name);
    const served = tierNames.map(() => 0);
    const totals = {
      promptBlocks: 0,
      hitBlocks: 0,
      verified: 0,
      computed: 0,
      rejected: 0,
      bytesRead: 0,
      bytesWritten: 0,
      prefillTokens: 0,
    };
    let firstRequest: FirstRequest | undefined;
    const started = performance.now();
    const seconds = (): number => (performance.now() - started) / 1000;
    const moved = (s: WarehouseStats): number =>
      s.tiers.reduce((a, t) => a + t.bytesIn + t.bytesOut, 0);

    for (const request of workload.requests) {
      if (signal?.aborted) throw abortError(signal);
      clock = request.time;
      const before = served.slice();
      const r = await serve(warehouse, request, bt, bs, batch, buffers, served, totals, signal);
      if (!firstRequest) {
        firstRequest = {
          promptBlocks: r.promptBlocks,
          hitBlocks: r.hitBlocks,
          byTier: Object.fromEntries(tierNames.map((n, t) => [n, served[t]! - before[t]!])),
        };
      }
      options.onProgress?.({
        done: request.index + 1,
        total: workload.requests.length,
        hitRate: totals.promptBlocks > 0 ? totals.hitBlocks / totals.promptBlocks : 0,
        bytesMoved: moved(warehouse.stats()),
        seconds: seconds(),
      });
    }
    const elapsed = seconds();
    const stats = warehouse.stats();
    const { tiers, ...overall } = stats;
    const bytesMoved = moved(stats);
    const asked = totals.promptBlocks;
    return {
      requests: workload.requests.length,
      promptBlocks: asked,
      hitBlocks: totals.hitBlocks,
      hitRate: asked > 0 ? totals.hitBlocks / asked : 0,
      tiers: tiers.map((t, i) => ({
        ...t,
        served: served[i]!,
        hitRate: asked > 0 ? served[i]! / asked : 0,
      })),
      verifiedBlocks: totals.verified,
      corruptBlocks: stats.corrupt,
      computedBlocks: totals.computed,
      rejectedBlocks: totals.rejected,
      bytesMoved,
      bytesRead: totals.bytesRead,
      bytesWritten: totals.bytesWritten,
      seconds: elapsed,
      gbps: elapsed > 0 ? bytesMoved / elapsed / 1e9 : 0,
      prefillTokens: totals.prefillTokens,
      prefillTokensSaved: totals.hitBlocks * bt,
      warmStart: blocksAtOpen > 0,
      blocksAtOpen,
      blocksAtEnd: stats.blocks,
      firstRequest,
      warehouse: overall,
    };
  } finally {
    await warehouse.close();
    await region?.close();
  }
}

interface Totals {
  promptBlocks: number;
  hitBlocks: number;
  verified: number;
  computed: number;
  rejected: number;
  bytesRead: number;
  bytesWritten: number;
  prefillTokens: number;
}

/** One request: returns its prompt blocks and how many of them were served from the warehouse. */
async function serve(
  warehouse: Warehouse,
  request: DemoRequest,
  bt: number,
  bs: number,
  batch: number,
  buffers: Buffer[],
  served: number[],
  totals: Totals,
  signal: AbortSignal | undefined,
): Promise<{ promptBlocks: number; hitBlocks: number }> {
  const keys = chainKeys(request.tokens, { blockTokens: bt }).keys();
  const promptBlocks = Math.floor(request.promptTokens / bt);
  const cachedPrefix = Math.min(warehouse.lookup(keys).prefix, promptBlocks);

  // 1. Read the cached prefix, a batch at a time; check each batch while the next one is read.
  let hit = 0;
  let reading: Promise<GetResult> | undefined =
    cachedPrefix > 0
      ? warehouse.get(keys.slice(0, Math.min(batch, cachedPrefix)), buffers[0]!, { signal })
      : undefined;
  for (let start = 0, n = 0; reading; start += batch, n++) {
    const end = Math.min(start + batch, cachedPrefix);
    const got = await reading;
    const whole = got.prefix === end - start;
    reading =
      whole && end < cachedPrefix
        ? warehouse.get(
            keys.slice(end, Math.min(end + batch, cachedPrefix)),
            buffers[(n + 1) % 2]!,
            {
              signal,
            },
          )
        : undefined;
    const buffer = buffers[n % 2]!;
    for (let i = 0; i < end - start; i++) {
      if (!got.found[i]) continue;
      const key = keys[start + i]!;
      const wrong = checkBlock(key, buffer, i * bs, bs);
      if (wrong >= 0) {
        if (reading) await reading.catch(() => undefined);
        throw new KvtierError(
          'KVTIER_CORRUPT',
          `request ${request.index}: block ${start + i} (key ${key.slice(0, 16)}…) came back from tier ${got.tiers[i]} with a wrong byte at offset ${wrong}`,
        );
      }
      totals.verified++;
      totals.bytesRead += bs;
      // Only the unbroken leading run is usable KV: attention needs the whole prefix.
      if (i < got.prefix) served[got.tiers[i]!]!++;
    }
    hit = start + got.prefix;
  }

  // 2. Prefill the rest of the prompt, decode the reply: make the bytes, store what is missing.
  const total = keys.length;
  const where = warehouse.lookup(keys).tiers;
  const missing: number[] = [];
  for (let i = hit; i < total; i++) if (where[i] === -1) missing.push(i);
  const systemBlocks = Math.floor(request.systemTokens / bt);
  const groups: { keys: Key[]; priority: number }[] = [];
  for (let j = 0; j < missing.length;) {
    const priority = missing[j]! < systemBlocks ? 1 : 0; // a shared system prompt outranks
    const group: Key[] = [];
    while (
      j < missing.length &&
      group.length < batch &&
      (missing[j]! < systemBlocks ? 1 : 0) === priority
    ) {
      group.push(keys[missing[j]!]!);
      j++;
    }
    groups.push({ keys: group, priority });
  }
  let writing: Promise<PutResult> | undefined;
  const account = (r: PutResult): void => {
    totals.rejected += r.rejected;
  };
  for (let g = 0; g < groups.length; g++) {
    if (signal?.aborted) {
      if (writing) await writing.catch(() => undefined);
      throw abortError(signal);
    }
    const { keys: group, priority } = groups[g]!;
    const buffer = buffers[g % 2]!;
    // The other buffer may still be in a put: this one's put resolved before the last began.
    for (let i = 0; i < group.length; i++) fillBlock(group[i]!, buffer, i * bs, bs);
    if (writing) account(await writing);
    writing = warehouse.put(group, buffer.subarray(0, group.length * bs), { priority });
    totals.computed += group.length;
    totals.bytesWritten += group.length * bs;
  }
  if (writing) account(await writing);

  totals.promptBlocks += promptBlocks;
  totals.hitBlocks += hit;
  totals.prefillTokens += request.promptTokens;
  return { promptBlocks, hitBlocks: hit };
}
