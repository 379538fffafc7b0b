/**
 * Device regions: GPU memory that kvtier's GPU engines copy to and from, and read files into.
 * JavaScript never dereferences it; it names it in transfers, as it names host Regions.
 */
import { KvtierError } from '../errors.js';
import { InFlight } from '../inflight.js';
import { native, type NativeDeviceRegion } from '../native.js';
import { describe, guard, options as readOptions } from '../validate.js';

export interface DeviceOptions {
  /** CUDA device ordinal (default 0). */
  device?: number;
}

export interface ImportOptions extends DeviceOptions {
  /** Where in the shared allocation the region starts (default 0). */
  offset?: number;
  /** Bytes of the region (default: the rest of the allocation). */
  bytes?: number;
}

/** What another process needs to import a region: the CUDA IPC handle and the offset in it. */
export interface IpcExport {
  handle: Uint8Array;
  offset: number;
  bytes: number;
}

export class DeviceRegion {
  /** @internal */
  readonly native: NativeDeviceRegion;
  /** @internal */
  readonly inFlight = new InFlight();
  private closing: Promise<void> | undefined;

  private constructor(nativeRegion: NativeDeviceRegion) {
    this.native = nativeRegion;
  }

  /** Allocates `bytes` of GPU memory (cuMemAlloc) that kvtier owns and frees on close. */
  static allocate(bytes: number, options: DeviceOptions = {}): DeviceRegion {
    options = readOptions<DeviceOptions>(options, 'options', ['device']);
    return new DeviceRegion(
      new (native().NativeDeviceRegion)({ origin: 'owned', device: deviceOf(options), bytes }),
    );
  }

  /**
   * Borrows `bytes` of GPU memory at `pointer` that another library of this process allocated
   * (a PyTorch tensor's `data_ptr()`, say). kvtier never frees it; the owner must keep it alive
   * until this region is closed.
   */
  static wrap(pointer: bigint, bytes: number, options: DeviceOptions = {}): DeviceRegion {
    options = readOptions<DeviceOptions>(options, 'options', ['device']);
    if (typeof pointer !== 'bigint') {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', 'pointer must be a bigint device address');
    }
    return new DeviceRegion(
      new (native().NativeDeviceRegion)({
        origin: 'wrapped',
        device: deviceOf(options),
        pointer,
        bytes,
      }),
    );
  }

  /**
   * Maps GPU memory another process shared by CUDA IPC handle (from `exportIpc()` of a kvtier
   * process, or `cudaIpcGetMemHandle` in an engine such as PyTorch's
   * `storage._share_cuda_()`). The mapping is closed with the region; the memory stays the
   * exporter's.
   */
  static import(handle: Uint8Array, options: ImportOptions = {}): DeviceRegion {
    options = readOptions<ImportOptions>(options, 'options', ['device', 'offset', 'bytes']);
    if (!guard('handle', () => handle instanceof Uint8Array) || handle.byteLength !== 64) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        'handle must be a Uint8Array of 64 bytes (a CUDA IPC memory handle)',
      );
    }
    return new DeviceRegion(
      new (native().NativeDeviceRegion)({
        origin: 'imported',
        device: deviceOf(options),
        handle,
        offset: options.offset ?? 0,
        bytes: options.bytes ?? 0,
      }),
    );
  }

  get byteLength(): number {
    return this.native.byteLength;
  }

  get device(): number {
    return this.native.device;
  }

  /** The device address (for handing to another library of this process). */
  get pointer(): bigint {
    return this.native.pointer;
  }

  get origin(): 'owned' | 'wrapped' | 'imported' {
    return this.native.origin;
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  /** The IPC handle another process passes to `DeviceRegion.import`. */
  exportIpc(): IpcExport {
    this.assertOpen();
    const { handle, offset } = this.native.ipcHandle();
    return { handle, offset, bytes: this.byteLength };
  }

  /** Waits for transfers that use the region, then frees (or unmaps) it. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.inFlight.drained().then(() => this.native.close());
    return this.closing;
  }

  /** @internal */
  assertOpen(): void {
    if (this.closing) throw new KvtierError('KVTIER_CLOSED', 'device region is closed');
  }
}

function deviceOf(options: DeviceOptions): number {
  const device = options.device ?? 0;
  if (!Number.isSafeInteger(device) || device < 0) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `device must be a CUDA ordinal, got ${describe(device)}`,
    );
  }
  return device;
}
