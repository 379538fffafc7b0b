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
 * what describes the warehouse (blockBytes, tiers) is the warehouse's, and stats() lists only this
 * tenant's statistics, never another's.
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
  const stats = (): ReturnType<Warehouse['stats']> => ({
    ...warehouse.stats(),
    tenants: [view.stats()],
  });
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
