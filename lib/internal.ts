/**
 * kvtier's internal entry: NOT a stable API. It is not in package.json's `exports`, and any of
 * these names may change or go in any release without notice.
 *
 * The applications under lib/apps (the `kvtier` CLI, its benchmarks, the demo and the simulator)
 * import the library the way a user would, through lib/index.ts (the `kvtier` package) and
 * lib/llama/index.ts (`kvtier/llama`), plus this file for the little they legitimately need
 * beyond the public API: the simulator drives BlockIndex's key tables and the policy registry
 * directly, the benchmarks measure the raw native binding, and the CLI reuses the library's
 * parsers and helpers so its options mean what the library means. Everything an application
 * imports from the library goes through one of these three files (test/unit/layers.test.ts
 * checks that).
 */

// core: the raw native binding and package root (benchmarks, the CLI's own path), coded-error
// helpers, directories, the package version.
export { native, packageRoot } from './core/native.js';
export { abortError, fromSystemError } from './core/errors.js';
export { ensureDir } from './core/dirs.js';
export { version } from './core/version.js';
// core: the KV block codecs (docs/codecs.md), which `kvtier bench codec` measures; not yet public.
export {
  BlockCodec,
  CODEC_NAMES,
  codecIsa,
  codecThreads,
  setCodecThreads,
  type CodecName,
  type CodecParams,
  type CodecSpec,
} from './core/codec.js';
// core: decoding those blocks on a GPU (lib/core/gpu/codec.ts), which `kvtier bench gpu` measures.
export { GpuCodec } from './core/gpu/codec.js';

// keys
export { KEY_BYTES } from './keys/keys.js';

// policy: the registry by name (the simulator and `kvtier sim` choose policies by name).
export { DEFAULT_POLICY, isOffline, policyByName, policyNames } from './policy/index.js';
export { onDeparture } from './policy/departures.js';

// warehouse: the block index's key tables, which the simulator replays traces through.
export { ABSENT, DENSE_KEY_LIMIT, DenseKeyIds, MapKeyIds } from './warehouse/block-index.js';

// peer: the address, token-file and transport parsers `kvtier serve` shares with the library,
// and the landing size the network benchmark sizes its buffers by.
export { checkSecret, readTokenFile, TENANT_NAME, type Secret } from './peer/auth.js';
export { tenantStats } from './peer/client.js';
export type { PeerStore, ServerTenancy } from './peer/server.js';
export { LANDING_BYTES } from './peer/landing.js';
export { parseAddress } from './peer/protocol.js';
export type { TransportOption } from './peer/transports.js';

// cluster: the Redis connection and index schema helpers `kvtier serve --cluster` and the cluster
// benchmark use.
export { openRedis, parseRedisUrl, type RedisClient } from './cluster/redis-connect.js';
export { checkNodeId } from './cluster/schema.js';
export type { NodeFacts } from './cluster/redis-index.js';

// engine-channel: the inference-engine channel `kvtier serve --engine-socket` runs and its
// benchmark drives.
export { EngineChannel, EngineClient, HostPoolFile } from './engine-channel/index.js';

// llama: the reference continuations the llama demo and benchmark check a restore against.
export {
  batchMatchedNext,
  compareNext,
  nextAfter,
  type Comparison,
  type LlamaEvalSequenceLike,
  type NextToken,
} from './llama/reference.js';
