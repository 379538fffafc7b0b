/**
 * `kvtier cluster bench`: the global index against the client a Redis user would write first,
 * in the same run on the same server.
 *
 * - Chain lookups: "which node holds how much of this 256-key chain?" kvtier answers with one
 *   script call (all nodes, one round trip). The naive client keeps one Redis string per block
 *   (the ids of the nodes holding it) and GETs key after key until the first miss.
 * - Publishing: 100k keys by kvtier (chunked scripts, pipelined) against one awaited SET per key.
 *
 * Both answer every lookup the same way; the benchmark checks that before it reports.
 */
import { randomBytes } from 'node:crypto';
import { cpus, loadavg } from 'node:os';

import { chainKeys, type Key, KvtierError, RedisIndex } from '../../index.js';
import { abortError, type NodeFacts, openRedis, type RedisClient } from '../../internal.js';

export interface ClusterBenchOptions {
  redis: string;
  /** Nodes holding prefixes of the chains (node j holds (N - j)/N of each chain). */
  nodes: number;
  /** Keys per chain looked up. */
  chainKeys: number;
  /** Distinct chains, looked up round robin. */
  chains: number;
  /** Seconds per lookup measurement. */
  seconds: number;
  /** Keys published in the publish measurement. */
  publishKeys: number;
  /** Lookups in flight in the concurrent rows. */
  inFlight: number;
  signal?: AbortSignal;
  progress?: (line: string) => void;
}

export const CLUSTER_BENCH_DEFAULTS = {
  nodes: 4,
  chainKeys: 256,
  chains: 64,
  seconds: 3,
  publishKeys: 100_000,
  inFlight: 8,
};

export interface LookupRow {
  client: 'kvtier' | 'naive';
  inFlight: number;
  lookups: number;
  lookupsPerSec: number;
  p50Us: number;
  p99Us: number;
  /** Redis commands sent per lookup. */
  commandsPerLookup: number;
}

export interface ClusterBenchReport {
  date: string;
  redisVersion: string;
  mode: 'standalone' | 'cluster';
  machine: { cpus: number; load1Before: number; load1After: number };
  options: Omit<ClusterBenchOptions, 'redis' | 'signal' | 'progress'>;
  /** Leading keys of a chain each node holds. */
  prefixes: number[];
  lookups: LookupRow[];
  /** kvtier lookups/s over naive lookups/s, at one in flight and at `inFlight`. */
  lookupRatio: { serial: number; concurrent: number };
  publish: {
    keys: number;
    kvtierSeconds: number;
    kvtierKeysPerSec: number;
    naiveSeconds: number;
    naiveKeysPerSec: number;
    ratio: number;
  };
}

const LEASE_MS = 10 * 60_000;
const NAIVE_PREFIX = 'kvtier-bench-naive:';

function facts(address: string): NodeFacts {
  return { address, capacityBytes: 0, usedBytes: 0, blocks: 0, load: 0, resyncs: 0 };
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

function check(o: ClusterBenchOptions): void {
  const ints: [string, number, number][] = [
    ['nodes', o.nodes, 1],
    ['chainKeys', o.chainKeys, 1],
    ['chains', o.chains, 1],
    ['publishKeys', o.publishKeys, 1],
    ['inFlight', o.inFlight, 1],
  ];
  for (const [name, v, min] of ints) {
    if (!Number.isSafeInteger(v) || v < min) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `${name} must be an integer >= ${min}, got ${v}`,
      );
    }
  }
  if (!Number.isFinite(o.seconds) || o.seconds <= 0) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `seconds must be positive, got ${o.seconds}`);
  }
}

/** Runs `lookup` round robin over chains for `seconds`, `inFlight` at a time. */
async function measure(
  seconds: number,
  inFlight: number,
  chains: Key[][],
  lookup: (chain: Key[]) => Promise<unknown>,
  signal?: AbortSignal,
): Promise<{ lookups: number; perSec: number; p50Us: number; p99Us: number }> {
  const latencies: number[] = [];
  let next = 0;
  const start = performance.now();
  const end = start + seconds * 1000;
  const worker = async (): Promise<void> => {
    while (performance.now() < end) {
      if (signal?.aborted) throw abortError(signal);
      const chain = chains[next++ % chains.length]!;
      const t = performance.now();
      await lookup(chain);
      latencies.push((performance.now() - t) * 1000);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  const elapsed = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    lookups: latencies.length,
    perSec: latencies.length / elapsed,
    p50Us: percentile(latencies, 0.5),
    p99Us: percentile(latencies, 0.99),
  };
}

/** The naive client's answer: GET block after block until no node holds one. */
async function naiveLookup(
  client: RedisClient,
  chain: Key[],
  ids: readonly string[],
): Promise<{ prefixes: Map<string, number>; commands: number }> {
  const prefixes = new Map(ids.map((id) => [id, 0]));
  const alive = new Set(ids);
  let commands = 0;
  for (let i = 0; i < chain.length && alive.size > 0; i++) {
    const v = await client.get(NAIVE_PREFIX + chain[i]!);
    commands++;
    if (v === null) break;
    const holders = new Set(v.split(','));
    for (const id of [...alive]) {
      if (holders.has(id)) prefixes.set(id, i + 1);
      else alive.delete(id);
    }
  }
  return { prefixes, commands };
}

export async function runClusterBench(options: ClusterBenchOptions): Promise<ClusterBenchReport> {
  check(options);
  const o = options;
  const say = o.progress ?? (() => {});
  const load1Before = loadavg()[0]!;
  const index = await RedisIndex.open(o.redis, { log: () => {} });
  const { client: raw, mode } = await openRedis(o.redis);
  const run = randomBytes(4).toString('hex');
  const ids = Array.from({ length: o.nodes }, (_, j) => `bench-${run}-${j}`);
  const instance = `bench-${run}`;
  const naiveKeys: string[] = [];
  try {
    const server = await raw.info('server');
    const redisVersion = /redis_version:(\S+)/.exec(server)?.[1] ?? 'unknown';

    // ------------------------------------------------------------------------------ publish
    say(`publishing ${o.publishKeys} keys (kvtier, then one SET per key)`);
    const pubId = `bench-${run}-pub`;
    await index.claim(pubId, instance, LEASE_MS, facts('bench:1'));
    const pubKeys = Array.from({ length: o.publishKeys }, () => randomBytes(32).toString('hex'));
    let t = performance.now();
    const r = await index.publish(pubId, instance, LEASE_MS, pubKeys, []);
    const kvtierSeconds = (performance.now() - t) / 1000;
    if (r !== 'ok') throw new KvtierError('KVTIER_REDIS', `publish answered ${r}`);
    t = performance.now();
    for (const k of pubKeys) {
      if (o.signal?.aborted) throw abortError(o.signal);
      const name = `${NAIVE_PREFIX}pub:${k}`;
      naiveKeys.push(name);
      await raw.set(name, pubId);
    }
    const naiveSeconds = (performance.now() - t) / 1000;
    await index.leave(pubId, instance);

    // ------------------------------------------------------------------------- lookup data
    say(`setting up ${o.chains} chains of ${o.chainKeys} keys on ${o.nodes} nodes`);
    const chains: Key[][] = [];
    for (let c = 0; c < o.chains; c++) {
      const tokens = new Uint32Array(o.chainKeys * 16);
      for (let i = 0; i < tokens.length; i++) tokens[i] = (c * 7919 + i * 31) >>> 0;
      chains.push(chainKeys(tokens, { blockTokens: 16, namespace: `bench-${run}` }).keys());
    }
    const prefixes = ids.map((_, j) => Math.round((o.chainKeys * (o.nodes - j)) / o.nodes));
    for (const [j, id] of ids.entries()) {
      await index.claim(id, instance, LEASE_MS, facts(`bench:${j + 2}`));
      const held = chains.flatMap((ch) => ch.slice(0, prefixes[j]));
      if ((await index.publish(id, instance, LEASE_MS, held, [])) !== 'ok') {
        throw new KvtierError('KVTIER_REDIS', 'publishing the lookup data failed');
      }
    }
    const naiveSets: Promise<unknown>[] = [];
    for (const ch of chains) {
      ch.forEach((k, i) => {
        const holders = ids.filter((_, j) => i < prefixes[j]!);
        if (holders.length === 0) return;
        naiveKeys.push(NAIVE_PREFIX + k);
        naiveSets.push(raw.set(NAIVE_PREFIX + k, holders.join(',')));
      });
    }
    await Promise.all(naiveSets);

    // Both clients must give the same answer before either is timed.
    for (const ch of chains.slice(0, 4)) {
      const a = await index.lookup(ch, ids);
      const b = (await naiveLookup(raw, ch, ids)).prefixes;
      for (const [j, id] of ids.entries()) {
        if (a.get(id) !== prefixes[j] || b.get(id) !== prefixes[j]) {
          throw new KvtierError(
            'KVTIER_REDIS',
            `lookup answers differ for ${id}: kvtier ${a.get(id)}, naive ${b.get(id)}, want ${prefixes[j]}`,
          );
        }
      }
    }
    const naiveCommands = (await naiveLookup(raw, chains[0]!, ids)).commands;

    // ------------------------------------------------------------------------------ lookups
    const lookups: LookupRow[] = [];
    for (const inFlight of [1, o.inFlight]) {
      say(`chain lookups, ${inFlight} in flight: kvtier`);
      const k = await measure(o.seconds, inFlight, chains, (ch) => index.lookup(ch, ids), o.signal);
      lookups.push({
        client: 'kvtier',
        inFlight,
        lookups: k.lookups,
        lookupsPerSec: k.perSec,
        p50Us: k.p50Us,
        p99Us: k.p99Us,
        commandsPerLookup: mode === 'standalone' ? 1 : o.nodes,
      });
      say(`chain lookups, ${inFlight} in flight: naive`);
      const n = await measure(
        o.seconds,
        inFlight,
        chains,
        (ch) => naiveLookup(raw, ch, ids),
        o.signal,
      );
      lookups.push({
        client: 'naive',
        inFlight,
        lookups: n.lookups,
        lookupsPerSec: n.perSec,
        p50Us: n.p50Us,
        p99Us: n.p99Us,
        commandsPerLookup: naiveCommands,
      });
    }
    const rate = (client: string, inFlight: number): number =>
      lookups.find((l) => l.client === client && l.inFlight === inFlight)!.lookupsPerSec;
    return {
      date: new Date().toISOString(),
      redisVersion,
      mode,
      machine: { cpus: cpus().length, load1Before, load1After: loadavg()[0]! },
      options: {
        nodes: o.nodes,
        chainKeys: o.chainKeys,
        chains: o.chains,
        seconds: o.seconds,
        publishKeys: o.publishKeys,
        inFlight: o.inFlight,
      },
      prefixes,
      lookups,
      lookupRatio: {
        serial: rate('kvtier', 1) / rate('naive', 1),
        concurrent: rate('kvtier', o.inFlight) / rate('naive', o.inFlight),
      },
      publish: {
        keys: o.publishKeys,
        kvtierSeconds,
        kvtierKeysPerSec: o.publishKeys / kvtierSeconds,
        naiveSeconds,
        naiveKeysPerSec: o.publishKeys / naiveSeconds,
        ratio: naiveSeconds / kvtierSeconds,
      },
    };
  } finally {
    // Leave nothing behind on the server.
    await Promise.allSettled(ids.map((id) => index.leave(id, instance)));
    for (let i = 0; i < naiveKeys.length; i += 1000) {
      await Promise.allSettled(naiveKeys.slice(i, i + 1000).map((k) => raw.unlink(k)));
    }
    await index.close();
    raw.disconnect();
  }
}

export function formatClusterBench(r: ClusterBenchReport): string {
  const out: string[] = [];
  out.push(
    `Redis ${r.redisVersion} (${r.mode}), ${r.options.nodes} nodes holding ${r.prefixes.join('/')} keys of each ${r.options.chainKeys}-key chain`,
  );
  out.push('');
  out.push('chain lookups       in flight  lookups/s   p50 µs   p99 µs  commands/lookup');
  for (const l of r.lookups) {
    out.push(
      `${l.client.padEnd(18)}  ${String(l.inFlight).padStart(9)}  ${l.lookupsPerSec.toFixed(0).padStart(9)}  ${l.p50Us.toFixed(0).padStart(7)}  ${l.p99Us.toFixed(0).padStart(7)}  ${String(l.commandsPerLookup).padStart(15)}`,
    );
  }
  out.push(
    `kvtier / naive: ${r.lookupRatio.serial.toFixed(1)}x at 1 in flight, ${r.lookupRatio.concurrent.toFixed(1)}x at ${r.options.inFlight}`,
  );
  out.push('');
  out.push(
    `publish ${r.publish.keys} keys: kvtier ${r.publish.kvtierKeysPerSec.toFixed(0)} keys/s (${r.publish.kvtierSeconds.toFixed(2)} s), one SET per key ${r.publish.naiveKeysPerSec.toFixed(0)} keys/s (${r.publish.naiveSeconds.toFixed(2)} s): ${r.publish.ratio.toFixed(1)}x`,
  );
  return out.join('\n');
}
