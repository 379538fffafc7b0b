/** kvtier/llama: kvtier as node-llama-cpp's KV store (node-llama-cpp is an optional peer). */
// Registers the tier kind 'peer' with the Warehouse, as the main entry does: a peer tier in
// LlamaKvOptions.tiers works whichever entry the caller imported.
import '../peer/peer-source.js';
export {
  LlamaKvCache,
  type GenerateResult,
  type LlamaKvOpenOptions,
  type LlamaKvOptions,
  type LlamaKvStats,
  type RestoreResult,
  type StageCost,
  type StoreResult,
} from './adapter.js';
export {
  importNodeLlamaCpp,
  kvBytesPerToken,
  modelFingerprint,
  type LlamaContextLike,
  type LlamaModelLike,
  type LlamaSequenceLike,
} from './engine.js';
export { BENCH_MODEL, TINY_MODEL, writeLlamaGguf, type LlamaModelSpec } from './gguf-writer.js';
export {
  buildSeqState,
  cutBlocks,
  parseSeqState,
  tokenBytes,
  type LayerLayout,
  type SeqState,
  type StateLayout,
} from './state-format.js';
