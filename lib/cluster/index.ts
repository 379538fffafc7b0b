export {
  ClusterNode,
  checkAddress,
  type JoinOptions,
  type NodeStats,
  type NodeState,
  type PeerFetch,
} from './node.js';
export {
  ClusterView,
  connectCluster,
  type ClusterStatus,
  type ClusterViewOptions,
  type NodeStatus,
  type RankedNode,
  type RankOptions,
} from './view.js';
export {
  RedisIndex,
  type NodeRecord,
  type NodeFacts,
  type RedisIndexOptions,
} from './redis-index.js';
export { parseRedisUrl, type RedisTarget } from './redis-connect.js';
export { INDEX_FORMAT, checkNodeId, nodeKeys } from './schema.js';
export { PeerPool, type PeerPoolOptions } from './peer-pool.js';
