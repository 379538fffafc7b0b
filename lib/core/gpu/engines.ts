/**
 * GPU engines. Both take the same TransferBatch as the file engines and complete through the same
 * promise mechanism: the copy engine moves bytes between host memory and GPU memory on kvtier's
 * own CUDA streams; the GPU file engine moves them between files and GPU memory, through cuFile or
 * through pinned bounce buffers.
 */
import { IoEngine } from '../engine.js';
import { KvtierError } from '../errors.js';
import { native, type NativeCopyEngine } from '../native.js';
import { gpuFilePathOf } from '../probe.js';
import { oneOf, options as readOptions } from '../validate.js';

export interface CopyEngineOptions {
  /** CUDA device whose context the copies run in (default 0). */
  device?: number;
  /** kvtier streams; batches go to them in turn, so several can be in flight (default 2). */
  streams?: number;
  /**
   * Hand each batch to the driver as one list (cuMemcpyBatchAsync, CUDA 12.8+) where it has it
   * (default true); false submits copy by copy, for comparison.
   */
  batch?: boolean;
  /**
   * Gather and scatter small pieces (under 1 MiB on average, 8 or more per batch) through GPU
   * memory with kvtier's segment-copy kernel, so PCIe sees a few large DMA copies (default true).
   */
  kernel?: boolean;
  /**
   * GPU memory each stream stages encoded blocks in for GpuCodec decodes (default 256 MiB); a
   * larger call is decoded in runs of blocks that fit, and a block larger than it is staged alone.
   */
  decodeStagingBytes?: number;
}

export class GpuCopyEngine extends IoEngine {
  /** Whether the driver takes a whole descriptor list in one call (cuMemcpyBatchAsync). */
  readonly batchCopy: boolean;
  /** Empty when small pieces go through the segment-copy kernel; otherwise why they do not. */
  readonly kernelPath: string;
  /** Empty when the codec decode kernels loaded (GpuCodec); otherwise why they did not. */
  readonly decodePath: string;
  private readonly copy: NativeCopyEngine;
  /** Decodes in flight, settled or not: close() lets them finish first. */
  private readonly decodes = new Set<Promise<void>>();

  /** @internal */
  constructor(nativeEngine: NativeCopyEngine) {
    const { batchCopy, kernelPath } = nativeEngine;
    super(
      nativeEngine,
      (batchCopy
        ? 'copies go to the driver as one list (cuMemcpyBatchAsync)'
        : 'copies go to the driver one by one (cuMemcpyAsync)') +
        (kernelPath === ''
          ? '; small pieces are gathered in GPU memory by a kernel'
          : `; ${kernelPath}`),
    );
    this.batchCopy = batchCopy;
    this.kernelPath = kernelPath;
    this.decodePath = nativeEngine.decodePath;
    this.copy = nativeEngine;
  }

  /** @internal GpuCodec's way in (native/gpu/copy_engine_codec.cc). */
  decode(...args: Parameters<NativeCopyEngine['decode']>): Promise<Float64Array> {
    const running = this.copy.decode(...args);
    const settled = running.then(
      () => undefined,
      () => undefined,
    );
    this.decodes.add(settled);
    void settled.then(() => this.decodes.delete(settled));
    return running;
  }

  /** Lets submitted batches and decodes finish, then stops the engine. Idempotent. */
  override async close(): Promise<void> {
    await Promise.all([...this.decodes]);
    return super.close();
  }
}

/**
 * Opens a copy engine: batches of `copy` descriptors between Regions (pinned where possible),
 * DeviceRegions and plain buffers, in any direction. Fails with KVTIER_NOT_AVAILABLE without a
 * usable CUDA driver and device.
 */
export function createCopyEngine(given: CopyEngineOptions = {}): GpuCopyEngine {
  const options = readOptions<CopyEngineOptions>(given, 'options', [
    'device',
    'streams',
    'batch',
    'kernel',
    'decodeStagingBytes',
  ]);
  const engine = new (native().NativeCopyEngine)({
    device: options.device ?? 0,
    streams: options.streams ?? 2,
    batch: options.batch ?? true,
    kernel: options.kernel ?? true,
    ...(options.decodeStagingBytes === undefined
      ? {}
      : { decodeStagingBytes: options.decodeStagingBytes }),
  });
  return new GpuCopyEngine(engine);
}

export type GpuFileIo = 'auto' | 'cufile' | 'posix';

export interface GpuFileEngineOptions {
  device?: number;
  /**
   * `'cufile'`: through NVIDIA cuFile (GPUDirect Storage where the nvidia-fs module is loaded,
   * its compatibility mode otherwise); fails with KVTIER_NOT_AVAILABLE where cuFile cannot load.
   * `'posix'`: pread/pwrite into pinned bounce buffers plus a DMA copy. `'auto'` (default): cuFile
   * where it loads and opens, POSIX otherwise, saying why in `stats()`.
   */
  io?: GpuFileIo;
  /** Threads doing I/O; also how many operations are in flight (default 4). */
  threads?: number;
  /** Size of each of a thread's two pinned bounce buffers, POSIX path (default 4 MiB). */
  chunkBytes?: number;
}

export interface GpuFileStats {
  io: 'cufile' | 'posix';
  /**
   * `io: 'auto'` only: operations on files cuFile would not register (it classifies file systems
   * through udev, which some machines lack), served by the POSIX path instead.
   */
  posixFallbacks: number;
  /** For cuFile: 'gds' with the nvidia-fs kernel module, 'compat' without it. */
  cufileMode?: string;
  /** Why this path was taken. */
  reason: string;
}

type PathInfo = Omit<GpuFileStats, 'posixFallbacks'>;
type NativeGpuFile = ConstructorParameters<typeof IoEngine>[0] & { readonly fallbacks: number };

export class GpuFileEngine extends IoEngine {
  private readonly info: PathInfo;
  private readonly gpuFile: NativeGpuFile;

  /** @internal */
  constructor(nativeEngine: NativeGpuFile, info: PathInfo) {
    super(nativeEngine, info.reason);
    this.gpuFile = nativeEngine;
    this.info = info;
  }

  stats(): GpuFileStats {
    return { ...this.info, posixFallbacks: this.gpuFile.fallbacks };
  }
}

/** How `io: 'auto'` would move files to GPU memory here, without opening anything. */
export function gpuFilePath(): PathInfo {
  // The loaders' report alone: the full probe() also tests O_DIRECT with a file on disk.
  const { cuda, cufile } = native().probe();
  return gpuFilePathOf(cuda, cufile);
}

/** Opens a GPU file engine. */
export function createGpuFileEngine(given: GpuFileEngineOptions = {}): GpuFileEngine {
  const options = readOptions<GpuFileEngineOptions>(given, 'options', [
    'device',
    'io',
    'threads',
    'chunkBytes',
  ]);
  const io = oneOf(options.io ?? 'auto', 'io', ['auto', 'cufile', 'posix'] as const);
  const addon = native();
  const base = {
    device: options.device ?? 0,
    threads: options.threads ?? 4,
    chunkBytes: options.chunkBytes ?? 4 << 20,
  };
  const open = (path: 'cufile' | 'posix') =>
    new addon.NativeGpuFileEngine({ ...base, io: path, fallback: io === 'auto' });
  if (io === 'posix')
    return new GpuFileEngine(open('posix'), { io, reason: 'posix was requested' });
  const planned = gpuFilePath();
  if (planned.io === 'cufile' || io === 'cufile') {
    if (planned.io !== 'cufile') throw new KvtierError('KVTIER_NOT_AVAILABLE', planned.reason);
    try {
      return new GpuFileEngine(open('cufile'), planned);
    } catch (e) {
      // The driver can load and still refuse to open (no GPU it supports, a bad cufile.json).
      if (io === 'cufile' || !(e instanceof KvtierError) || e.code !== 'KVTIER_NOT_AVAILABLE') {
        throw e;
      }
      return new GpuFileEngine(open('posix'), {
        io: 'posix',
        reason: `cuFile did not open (${e.message}); using pinned bounce buffers`,
      });
    }
  }
  return new GpuFileEngine(open('posix'), planned);
}
