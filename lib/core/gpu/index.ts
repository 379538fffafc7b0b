export { GpuCodec } from './codec.js';
export {
  DeviceRegion,
  type DeviceOptions,
  type ImportOptions,
  type IpcExport,
} from './device-region.js';
export {
  createCopyEngine,
  createGpuFileEngine,
  GpuCopyEngine,
  GpuFileEngine,
  gpuFilePath,
  type CopyEngineOptions,
  type GpuFileEngineOptions,
  type GpuFileIo,
  type GpuFileStats,
} from './engines.js';
