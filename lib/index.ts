export { ErrorCodes, KvtierError, isKvtierError, type ErrorCode } from './core/errors.js';
export { Region, type RegionOptions, type PinOption } from './core/region.js';
export { KvFile, openFile, type OpenFileOptions } from './core/file.js';
export {
  BatchResult,
  createEngine,
  IoEngine,
  TransferBatch,
  type EngineKind,
  type EngineOptions,
  type Target,
  type ChecksumOption,
} from './core/engine.js';
export { probe, type ProbeReport } from './core/probe.js';
export {
  chainKeys,
  KeyChain,
  namespaceRoot,
  toKey,
  type Key,
  type KeyLike,
  type ChainOptions,
} from './keys/keys.js';
export {
  Warehouse,
  type WarehouseOptions,
  type TierOptions,
  type FileTierCodecOptions,
  type PutResult,
  type PutStatus,
  type EvictResult,
  type EvictStatus,
  type CloseError,
  type GetResult,
  type LookupResult,
  type PrefetchResult,
  type Lease,
  type WarehouseStats,
  type TierStats,
  type PredictivePrefetchOptions,
  type PredictivePrefetchStats,
  type StagedTierStats,
  TenantView,
  type TenancyOptions,
  type TenantOptions,
  type TenantQuota,
  type TenantStats,
  type TenantTierStats,
  type TenantCount,
} from './warehouse/warehouse.js';
// Registers the tier kind 'peer' (a block source) with the Warehouse.
export type { PeerTierOptions } from './peer/peer-source.js';
import './peer/peer-source.js';
export { BlockIndex } from './warehouse/block-index.js';
export type { AccessInfo, EvictionPolicy } from './policy/policy.js';
export { LruPolicy } from './policy/lru.js';
export {
  appendGather,
  appendScatter,
  describeKvLayout,
  gatherBlocks,
  KV_SEGMENT_STRIDE,
  KvCopyPlan,
  kvBlockBytes,
  kvDims,
  kvDtypeBytes,
  planKvCopy,
  scatterBlocks,
  type KvCopyOptions,
  type KvCopyResult,
  type KvDim,
  type KvDtype,
  type KvLayout,
  type KvLayoutForm,
  type KvLayoutSpec,
  type KvPacking,
  type KvPlane,
  type KvPlanOptions,
  type KvSegment,
  type KvShape,
  type KvTensorRef,
} from './layout/index.js';
export {
  createCopyEngine,
  createGpuFileEngine,
  DeviceRegion,
  GpuCopyEngine,
  GpuFileEngine,
  gpuFilePath,
  type CopyEngineOptions,
  type DeviceOptions,
  type GpuFileEngineOptions,
  type GpuFileIo,
  type GpuFileStats,
  type ImportOptions,
  type IpcExport,
} from './core/gpu/index.js';
export {
  connect,
  PeerClient,
  type ConnectOptions,
  type PeerCallOptions,
  type PeerGetResult,
  type PeerLookupResult,
  type PeerPutOptions,
  type PeerPutResult,
} from './peer/client.js';
export { PeerServer, type PeerServerOptions } from './peer/server.js';
export { PROTOCOL_VERSION } from './peer/protocol.js';
export {
  ClusterNode,
  ClusterView,
  connectCluster,
  INDEX_FORMAT,
  PeerPool,
  RedisIndex,
  type ClusterStatus,
  type JoinOptions,
  type NodeRecord,
  type NodeStats,
  type NodeStatus,
  type PeerFetch,
  type RankedNode,
  type RankOptions,
} from './cluster/index.js';
export type { BlockSource, ChangeListener, ClusterStats } from './warehouse/types.js';
