export { ErrorCodes, KvtierError, isKvtierError, type ErrorCode } from './errors.js';
export { Region, type RegionOptions, type PinOption } from './region.js';
export { KvFile, openFile, type OpenFileOptions } from './file.js';
export {
  BatchResult,
  createEngine,
  IoEngine,
  TransferBatch,
  type EngineKind,
  type EngineOptions,
  type Target,
} from './engine.js';
export { probe, type ProbeReport } from './probe.js';
