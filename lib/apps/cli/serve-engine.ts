/**
 * The engine channel options of `kvtier serve` (lib/engine-channel/): a Unix socket for engine
 * processes on this host, beside the network listener or instead of it.
 */
import { resolve } from 'node:path';

import type { Command } from 'commander';

import { KvtierError, Warehouse, type WarehouseOptions } from '../../index.js';
import { EngineChannel } from '../../internal.js';
import { serveUntilSignal, tierSummary, type Log } from './serve-lifecycle.js';
import { ServeMetrics } from './serve-metrics.js';

export interface EngineSocketOptions {
  engineSocket?: string;
  engineSocketMode?: string;
  /** With `serve --tenants`: the tenant the engine socket acts as. */
  engineTenant?: string;
}

export function addEngineSocketOptions(cmd: Command): void {
  cmd
    .option('--engine-socket <path>', 'Unix socket for engine processes on this host')
    .option('--engine-socket-mode <mode>', 'permission bits of the engine socket (octal)', '0600')
    .option('--engine-tenant <name>', 'with --tenants: the tenant engines on the socket act as');
}

/**
 * The warehouse as one tenant sees it, for the engine channel (`--engine-tenant`): its blocks go
 * through the tenant's view (keys mapped into the tenant's namespace, its quota, its counters);
 * what describes the warehouse (blockBytes, the tiers' names, kinds, capacities and codecs) is the
 * warehouse's; every figure in stats() is this tenant's own or 0, never another's or the sum.
 */
export function engineTenantWarehouse(warehouse: Warehouse, name: string): Warehouse {
  const view = warehouse.tenant(name);
  const routed = new Set<PropertyKey>([
    'put',
    'get',
    'lookup',
    'prefetch',
    'evict',
    'pin',
    'unpin',
  ]);
  // Only what the tenant may see: the tiers' static description (name, kind, capacity, codec)
  // and its own usage and counters. The server-wide counters would show another tenant's puts
  // and hits happening (a side channel), so they read 0 here.
  const stats = (): ReturnType<Warehouse['stats']> => {
    const all = warehouse.stats();
    const own = view.stats();
    const used = new Map(own.tiers.map((t) => [t.name, t.blocks]));
    return {
      blockBytes: all.blockBytes,
      blocks: own.tiers.reduce((n, t) => n + t.blocks, 0),
      gets: 0,
      hits: own.read.blocks,
      misses: 0,
      hitRate: 0,
      corrupt: 0,
      ioErrors: 0,
      remoteHits: 0,
      tiers: all.tiers.map((t) => ({
        name: t.name,
        kind: t.kind,
        capacityBlocks: t.capacityBlocks,
        usedBlocks: used.get(t.name) ?? 0,
        hits: 0,
        misses: 0,
        bytesIn: 0,
        bytesOut: 0,
        evictions: 0,
        promotions: 0,
        demotions: 0,
        corrupt: 0,
        ...(t.codec !== undefined ? { codec: t.codec } : {}),
        ...(t.storedBlockBytes !== undefined ? { storedBlockBytes: t.storedBlockBytes } : {}),
      })),
      tenants: [own],
    };
  };
  return new Proxy(warehouse, {
    get(target, prop) {
      if (prop === 'hostSlots') return view.hostSlots;
      if (prop === 'stats') return stats;
      const from: object = routed.has(prop) ? view : target;
      const value: unknown = Reflect.get(from, prop, from);
      return typeof value === 'function'
        ? (value as (...a: unknown[]) => unknown).bind(from)
        : value;
    },
  });
}

/** Checks the options; true when an engine socket was asked for. */
export function checkEngineSocketOptions(opts: EngineSocketOptions): boolean {
  modeOf(opts);
  return opts.engineSocket !== undefined;
}

function modeOf(opts: EngineSocketOptions): number {
  const text = opts.engineSocketMode ?? '0600';
  if (!/^0?[0-7]{3}$/.test(text)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `--engine-socket-mode must be octal permission bits such as 0600, got '${text}'`,
    );
  }
  return parseInt(text, 8);
}

export async function startEngineChannel(
  opts: EngineSocketOptions,
  warehouse: Warehouse,
  log: Log,
  metrics?: ServeMetrics,
): Promise<EngineChannel | undefined> {
  if (opts.engineSocket === undefined) return undefined;
  return EngineChannel.start({
    path: resolve(opts.engineSocket),
    mode: modeOf(opts),
    warehouse:
      opts.engineTenant !== undefined
        ? engineTenantWarehouse(warehouse, opts.engineTenant)
        : warehouse,
    log: metrics?.countingLog('engine', log) ?? log,
    ...(metrics ? { observe: metrics.engineObserver() } : {}),
  });
}

/** `kvtier serve --engine-socket` without --listen: engines on this host only. */
export async function serveEnginesOnly(
  opts: EngineSocketOptions,
  options: WarehouseOptions,
  log: Log,
  metricsAt?: { host: string; port: number },
): Promise<void> {
  const warehouse = await Warehouse.open(options);
  const metrics = metricsAt ? new ServeMetrics(warehouse) : undefined;
  let channel: EngineChannel | undefined;
  let metricsPort: number | undefined;
  try {
    channel = (await startEngineChannel(opts, warehouse, log, metrics))!;
    metrics?.attach({ engines: channel });
    if (metricsAt) metricsPort = await metrics!.listen(metricsAt.host, metricsAt.port);
  } catch (e) {
    await channel?.close();
    await warehouse.close();
    throw e;
  }
  const engines = channel;
  log('listening', {
    engineSocket: engines.path,
    blockBytes: options.blockBytes,
    maxBatch: engines.maxBatch,
    ...(metricsAt ? { metricsHost: metricsAt.host, metricsPort } : {}),
    ...tierSummary(warehouse),
  });
  await serveUntilSignal(
    log,
    warehouse,
    () => ({ engines: engines.counters.connected }),
    async () => {
      await metrics?.close();
      await engines.close();
    },
  );
}
