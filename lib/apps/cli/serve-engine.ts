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
}

export function addEngineSocketOptions(cmd: Command): void {
  cmd
    .option('--engine-socket <path>', 'Unix socket for engine processes on this host')
    .option('--engine-socket-mode <mode>', 'permission bits of the engine socket (octal)', '0600');
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
    warehouse,
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
