/**
 * `kvtier serve`: a warehouse node other processes and machines put blocks into and get blocks
 * from (lib/peer/server.ts). Logs one JSON object per line on stdout. SIGTERM and SIGINT stop it
 * cleanly: requests in flight finish, then the warehouse writes its host-only blocks down to the
 * file tier and closes, so a restart on the same --dir finds them.
 */
import { resolve } from 'node:path';

import type { Command } from 'commander';

import { parseSize } from '../sizes.js';
import { KvtierError, PeerServer, type TierOptions, Warehouse } from '../../index.js';
import { DEFAULT_POLICY, policyNames } from '../../internal.js';
import {
  type EngineChannel,
  parseAddress,
  readTokenFile,
  type TransportOption,
} from '../../internal.js';
import { fileCodecOption, type ServeCodecOptions } from './serve-codec.js';
import { serveUntilSignal, tierSummary } from './serve-lifecycle.js';
import { parseMetricsAddress, ServeMetrics } from './serve-metrics.js';
import {
  checkEngineTenant,
  checkTenantsCombination,
  readTenantsConfig,
  serverTenancy,
} from './serve-tenants.js';
import {
  addEngineSocketOptions,
  checkEngineSocketOptions,
  serveEnginesOnly,
  startEngineChannel,
  type EngineSocketOptions,
} from './serve-engine.js';
import {
  addClusterOptions,
  checkClusterOptions,
  joinFromServe,
  type JoinedCluster,
  type ServeClusterOptions,
} from './serve-cluster.js';

export interface ServeOptions extends ServeClusterOptions, EngineSocketOptions, ServeCodecOptions {
  listen?: string;
  dir?: string;
  hostBytes?: string;
  fileBytes?: string;
  blockBytes: string;
  tokenFile?: string;
  transport?: string;
  maxConnections?: string;
  handshakeTimeout?: string;
  durability?: string;
  maxHandshakes?: string;
  payloadTimeout?: string;
  metrics?: string;
  tenants?: string;
  policy?: string;
  predictivePrefetch?: string;
}

/** A whole number from min to max, or KVTIER_BAD_ARGUMENT naming the option. */
function intOption(value: string | undefined, fallback: number, name: string, max: number): number {
  const n = Number(value ?? fallback);
  if (!Number.isSafeInteger(n) || n < 1 || n > max) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `${name} must be an integer from 1 to ${max}`);
  }
  return n;
}

function log(event: string, fields: Record<string, unknown> = {}): void {
  process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), event, ...fields })}\n`);
}

function warehouseOptions(opts: ServeOptions): {
  blockBytes: number;
  tiers: TierOptions[];
  policy?: string;
  predictivePrefetch?: { bytesPerSecond: number };
} {
  const blockBytes = parseSize(opts.blockBytes, 'block size');
  const tiers: TierOptions[] = [];
  if (opts.hostBytes !== undefined) {
    tiers.push({ kind: 'host', bytes: parseSize(opts.hostBytes, 'host bytes') });
  }
  if (opts.fileBytes !== undefined || opts.dir !== undefined) {
    if (opts.dir === undefined || opts.fileBytes === undefined) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', '--dir and --file-bytes go together');
    }
    const codec = fileCodecOption(opts);
    tiers.push({
      kind: 'file',
      dir: resolve(opts.dir),
      bytes: parseSize(opts.fileBytes, 'file bytes'),
      ...(codec ? { codec } : {}),
    });
  } else if (opts.fileCodec !== undefined) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', '--file-codec needs a file tier (--dir)');
  }
  if (tiers.length === 0) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'serve needs --host-bytes, --dir or both');
  }
  if (opts.policy !== undefined && !policyNames({ offline: false }).includes(opts.policy)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `--policy must be one of ${policyNames({ offline: false }).join(', ')}, not ${opts.policy}`,
    );
  }
  const rate = opts.predictivePrefetch;
  return {
    blockBytes,
    tiers,
    ...(opts.policy !== undefined ? { policy: opts.policy } : {}),
    ...(rate !== undefined
      ? { predictivePrefetch: { bytesPerSecond: parseSize(rate, 'predictive prefetch rate') } }
      : {}),
  };
}

export async function serve(opts: ServeOptions): Promise<void> {
  const engineSocket = checkEngineSocketOptions(opts);
  const metricsAt = opts.metrics === undefined ? undefined : parseMetricsAddress(opts.metrics);
  if (opts.listen === undefined && !engineSocket) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'serve needs --listen, --engine-socket or both');
  }
  if (opts.listen === undefined) {
    if (opts.tenants !== undefined || opts.engineTenant !== undefined) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        '--tenants needs --listen (the operator reads the statistics over it)',
      );
    }
    await serveEnginesOnly(opts, warehouseOptions(opts), log, metricsAt);
    return;
  }
  if (opts.tenants !== undefined) checkTenantsCombination(opts);
  else if (opts.tokenFile === undefined) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', '--listen needs --token-file (or --tenants)');
  }
  const { host, port } = parseAddress(opts.listen);
  const { blockBytes, tiers, policy, predictivePrefetch } = warehouseOptions(opts);
  const transport = (opts.transport ?? 'auto') as TransportOption;
  const maxConnections = opts.maxConnections === undefined ? 256 : Number(opts.maxConnections);
  if (!Number.isSafeInteger(maxConnections) || maxConnections < 1 || maxConnections > 65536) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', '--max-connections must be 1 to 65536');
  }
  checkClusterOptions(opts);
  const handshakeTimeoutMs = Number(opts.handshakeTimeout ?? 5000);
  if (!Number.isSafeInteger(handshakeTimeoutMs) || handshakeTimeoutMs < 1) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', '--handshake-timeout must be a positive integer');
  }
  const durability = opts.durability ?? 'none';
  if (durability !== 'none' && durability !== 'sync') {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `--durability must be none or sync, not ${durability}`,
    );
  }
  if (durability === 'sync' && opts.dir === undefined) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', '--durability sync needs a file tier (--dir)');
  }
  const maxHandshakes = intOption(opts.maxHandshakes, 64, '--max-handshakes', 65536);
  const payloadTimeoutMs = intOption(opts.payloadTimeout, 30_000, '--payload-timeout', 86_400_000);
  const tenants =
    opts.tenants === undefined
      ? undefined
      : await readTenantsConfig(
          opts.tenants,
          tiers.map((t) => t.kind),
        );
  checkEngineTenant(opts.engineTenant, tenants);
  const secret = tenants ? tenants.operator : await readTokenFile(opts.tokenFile!);
  const warehouse = await Warehouse.open({
    blockBytes,
    tiers,
    ...(policy !== undefined ? { policy } : {}),
    ...(predictivePrefetch ? { predictivePrefetch } : {}),
    durability,
    ...(tenants ? { tenancy: tenants.tenancy } : {}),
  });
  const metrics = metricsAt ? new ServeMetrics(warehouse) : undefined;
  let server: PeerServer;
  try {
    server = PeerServer.start({
      host,
      port,
      warehouse: metrics?.peerWarehouse() ?? warehouse,
      secret,
      transport,
      maxConnections,
      handshakeTimeoutMs,
      durablePuts: durability === 'sync',
      maxHandshakes,
      payloadTimeoutMs,
      ...(tenants
        ? {
            tenants: serverTenancy(tenants, warehouse, (view) =>
              metrics ? metrics.peerTenantView(view) : view,
            ),
          }
        : {}),
      log: metrics?.countingLog('peer', log) ?? log,
    });
  } catch (e) {
    await warehouse.close();
    throw e;
  }
  let cluster: JoinedCluster | undefined;
  let engines: EngineChannel | undefined;
  let metricsPort: number | undefined;
  try {
    engines = await startEngineChannel(opts, warehouse, log, metrics);
    cluster = await joinFromServe(opts, warehouse, { host, port: server.port }, secret, log);
    metrics?.attach({ peer: server, ...(engines ? { engines } : {}) });
    if (metricsAt) metricsPort = await metrics!.listen(metricsAt.host, metricsAt.port);
  } catch (e) {
    await cluster?.close();
    await engines?.close();
    await server.close();
    await warehouse.close();
    throw e;
  }
  log('listening', {
    host,
    port: server.port,
    transport: server.transport.kind,
    transportReason: server.transport.reason,
    blockBytes,
    durability,
    maxBatch: server.maxBatch,
    ...(tenants ? { tenants: [...tenants.tokens.keys()] } : {}),
    ...(engines ? { engineSocket: engines.path } : {}),
    ...(metricsAt ? { metricsHost: metricsAt.host, metricsPort } : {}),
    ...tierSummary(warehouse),
  });
  await serveUntilSignal(
    log,
    warehouse,
    () => ({ connections: server.connections }),
    async () => {
      await metrics?.close();
      await cluster?.close();
      await engines?.close();
      await server.close();
    },
  );
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run a warehouse node that peers put blocks into and get blocks from')
    .option('--listen <host:port>', 'address to listen on (port 0 picks a free one)')
    .option('--dir <dir>', 'file tier directory (kept across restarts)')
    .option('--host-bytes <size>', 'host memory tier capacity, e.g. 1GiB')
    .option('--file-bytes <size>', 'file tier capacity, e.g. 64GiB')
    .option(
      '--file-codec <codec>',
      'store the file tier lossy: fp8-e4m3 | int8 | int8-token | kivi4 | kivi2 (kivi2:64 sets the group); needs --kv-shape',
    )
    .option('--kv-shape <shape>', "the blocks' KV: dtype,layers,blockTokens,kvHeads,headDim")
    .requiredOption('--block-bytes <size>', 'bytes per block, e.g. 1MiB')
    .option('--token-file <file>', 'file holding the shared secret (at least 16 bytes)')
    .option(
      '--tenants <file>',
      'serve tenants: a JSON config of tenants, their tokens, quotas and retention (docs/tenants.md)',
    )
    .option(
      '--policy <name>',
      `eviction policy: ${policyNames({ offline: false }).join(', ')} (default ${DEFAULT_POLICY})`,
    )
    .option(
      '--predictive-prefetch <bytes-per-second>',
      'stage blocks of conversations the policy predicts back soon one tier up, e.g. 1GiB (return-time only)',
    )
    .option('--transport <kind>', 'auto | tcp | verbs', 'auto')
    .option('--max-connections <n>', 'connections open at once; more are refused', '256')
    .option('--handshake-timeout <ms>', 'close connections not authenticated by then', '5000')
    .option(
      '--durability <mode>',
      'sync: answer every put only once its blocks are synced to the file tier',
      'none',
    )
    .option(
      '--max-handshakes <n>',
      'connections not yet authenticated; the oldest makes room',
      '64',
    )
    .option('--payload-timeout <ms>', 'close connections idle part way through a frame', '30000')
    .option(
      '--metrics <[host:]port>',
      'serve Prometheus metrics at http://HOST:PORT/metrics (a bare port binds 127.0.0.1)',
    )
    .action(async (opts: ServeOptions) => {
      await serve(opts);
    });
  addClusterOptions(program.commands.find((c) => c.name() === 'serve')!);
  addEngineSocketOptions(program.commands.find((c) => c.name() === 'serve')!);
}
