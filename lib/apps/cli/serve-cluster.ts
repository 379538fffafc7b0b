/**
 * `kvtier serve --redis URL --node-id ID --advertise HOST:PORT`: the node joins a cluster. It
 * publishes what its warehouse holds to the global index, and on a local miss fetches from the
 * peer holding the longest prefix, over the same authenticated transport (one shared token).
 */
import type { Command } from 'commander';

import { ClusterNode, KvtierError, PeerPool, type Warehouse } from '../../index.js';
import { checkNodeId, parseRedisUrl, type Secret } from '../../internal.js';

export interface ServeClusterOptions {
  redis?: string;
  nodeId?: string;
  advertise?: string;
  leaseMs?: string;
}

export function addClusterOptions(command: Command): Command {
  return command
    .option('--redis <url>', 'join the cluster whose global index lives at this Redis URL')
    .option('--node-id <id>', 'this node’s name in the cluster (with --redis)')
    .option(
      '--advertise <host:port>',
      'where peers reach this node (with --redis; default: the listen address)',
    )
    .option('--lease-ms <ms>', 'entries vanish this long after the node stops renewing them');
}

/** Refuses bad cluster options before anything is opened. */
export function checkClusterOptions(opts: ServeClusterOptions): void {
  if (opts.redis === undefined) {
    for (const [flag, v] of [
      ['--node-id', opts.nodeId],
      ['--advertise', opts.advertise],
      ['--lease-ms', opts.leaseMs],
    ] as const) {
      if (v !== undefined) throw new KvtierError('KVTIER_BAD_ARGUMENT', `${flag} needs --redis`);
    }
    return;
  }
  parseRedisUrl(opts.redis);
  if (opts.nodeId === undefined) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', '--redis needs --node-id');
  }
  checkNodeId(opts.nodeId);
  if (opts.leaseMs !== undefined && !/^\d+$/.test(opts.leaseMs)) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `--lease-ms must be a whole number of ms`);
  }
}

export interface JoinedCluster {
  node: ClusterNode;
  close(): Promise<void>;
}

export async function joinFromServe(
  opts: ServeClusterOptions,
  warehouse: Warehouse,
  listen: { host: string; port: number },
  secret: Secret,
  log: (event: string, fields?: Record<string, unknown>) => void,
): Promise<JoinedCluster | undefined> {
  if (opts.redis === undefined) return undefined;
  let advertise = opts.advertise;
  if (advertise === undefined) {
    if (['0.0.0.0', '::', ''].includes(listen.host)) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `listening on ${listen.host} says nothing about where peers reach this node: give --advertise HOST:PORT`,
      );
    }
    advertise = `${listen.host.includes(':') ? `[${listen.host}]` : listen.host}:${listen.port}`;
  }
  const pool = new PeerPool({ token: secret, blockBytes: warehouse.blockBytes });
  let node: ClusterNode;
  try {
    node = await ClusterNode.join(warehouse, {
      redis: opts.redis,
      nodeId: opts.nodeId!,
      advertise,
      ...(opts.leaseMs !== undefined ? { leaseMs: Number(opts.leaseMs) } : {}),
      fetch: pool.fetch,
      log: (message) => log('cluster', { message }),
    });
  } catch (e) {
    await pool.close();
    throw e;
  }
  log('cluster_joined', {
    nodeId: node.id,
    advertise: node.address,
    redis: parseRedisUrl(opts.redis).display,
    leaseMs: node.leaseMs,
    blocks: warehouse.stats().blocks,
  });
  return {
    node,
    close: async () => {
      const stats = node.stats();
      await node.close();
      await pool.close();
      log('cluster_left', { ...stats });
    },
  };
}
