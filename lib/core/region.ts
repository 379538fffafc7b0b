/**
 * Regions: page-aligned host memory allocated natively and shown to JavaScript as an external
 * ArrayBuffer, so I/O lands where JavaScript reads without a copy.
 */
import { constants } from 'node:buffer';

import { KvtierError } from './errors.js';
import { InFlight } from './inflight.js';
import { native, type NativeRegion } from './native.js';
import { badArgument, integer, oneOf, options as readOptions } from './validate.js';

export type PinOption = 'auto' | boolean;

export interface RegionOptions {
  /**
   * Page-lock the memory with the CUDA driver so GPU copies can DMA from it. `'auto'` (default)
   * pins when a CUDA device is present and reports the outcome in `pinned`/`pinReason`; `true`
   * fails with KVTIER_NOT_AVAILABLE when it cannot pin; `false` never pins.
   */
  pin?: PinOption;
}

/**
 * Which Region a buffer belongs to and where in it the buffer starts, so views passed as I/O
 * targets are tracked as the region.
 */
const regionOfBuffer = new WeakMap<ArrayBuffer, { region: Region; base: number }>();

/** The largest ArrayBuffer this Node makes (4 GiB on Node 20): larger regions are sliced. */
const MAX_ARRAY_BUFFER = constants.MAX_LENGTH;

export class Region {
  /** @internal */
  readonly native: NativeRegion;
  /** @internal */
  readonly inFlight = new InFlight();
  private closing: Promise<void> | undefined;
  private arrayBuffer: ArrayBuffer | undefined;

  private constructor(nativeRegion: NativeRegion) {
    this.native = nativeRegion;
  }

  /** Allocates `bytes` of zeroed, page-aligned memory. */
  static allocate(bytes: number, options: RegionOptions = {}): Region {
    integer(bytes, 'bytes', { min: 1 });
    const pin = oneOf(
      readOptions<RegionOptions>(options, 'options', ['pin']).pin ?? 'auto',
      'pin',
      ['auto', true, false],
    );
    const addon = native();
    return new Region(
      new addon.NativeRegion(bytes, pin === 'auto' ? 'auto' : pin ? 'on' : 'off', MAX_ARRAY_BUFFER),
    );
  }

  /**
   * Maps the first `bytes` of a file shared (MAP_SHARED): writes are seen by every process that
   * maps the same file, such as an engine's memfd reached through `/proc/<pid>/fd/<n>` or a file
   * in /dev/shm. The mapping is undone when the region closes; the file stays its owner's.
   */
  static mapShared(path: string, bytes: number): Region {
    if (typeof path !== 'string' || path === '') {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', 'path must be a non-empty string');
    }
    return new Region(new (native().NativeRegion)({ path, bytes }, 'off', MAX_ARRAY_BUFFER));
  }

  /** Of a shared mapping: "<device>:<inode>" of the file, the same for every mapping of it. */
  get fileId(): string | undefined {
    return this.native.fileId === '' ? undefined : this.native.fileId;
  }

  /** @internal The region a view or buffer lies in, if any, and where in it the buffer starts. */
  static owning(buffer: ArrayBufferLike): { region: Region; base: number } | undefined {
    return buffer instanceof ArrayBuffer ? regionOfBuffer.get(buffer) : undefined;
  }

  get byteLength(): number {
    return this.native.byteLength;
  }

  get pinned(): boolean {
    return this.native.pinned;
  }

  /** Why the region is not pinned although pinning was allowed; empty otherwise. */
  get pinReason(): string {
    return this.native.pinReason;
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  /**
   * The whole region as an ArrayBuffer (zero-copy; detached once the region closes). A region
   * larger than the largest ArrayBuffer (4 GiB on Node 20) has none: use `view()`.
   */
  get buffer(): ArrayBuffer {
    this.assertOpen();
    if (this.byteLength > MAX_ARRAY_BUFFER) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `a region of ${this.byteLength} bytes is larger than the largest ArrayBuffer ` +
          `(${MAX_ARRAY_BUFFER}); take views of it with view(offset, length)`,
      );
    }
    if (!this.arrayBuffer) {
      this.arrayBuffer = this.native.buffer;
      regionOfBuffer.set(this.arrayBuffer, { region: this, base: 0 });
    }
    return this.arrayBuffer;
  }

  /**
   * A zero-copy byte view of part of the region (the whole region by default). Any view of a
   * region of up to 4 GiB works; beyond that, each view must itself fit an ArrayBuffer.
   */
  view(offset = 0, length = this.byteLength - offset): Uint8Array {
    this.assertOpen();
    checkRange(offset, length, this.byteLength);
    if (this.byteLength <= MAX_ARRAY_BUFFER) return new Uint8Array(this.buffer, offset, length);
    const slice = this.native.slice(offset, length);
    regionOfBuffer.set(slice, { region: this, base: offset });
    return new Uint8Array(slice);
  }

  /**
   * Waits for transfers that use the region, then frees it. Every view of it becomes empty at
   * once, so no JavaScript can read freed memory. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.inFlight.drained().then(() => this.native.close());
    return this.closing;
  }

  /** @internal */
  assertOpen(): void {
    if (this.closing) throw new KvtierError('KVTIER_CLOSED', 'region is closed');
  }
}

/** Throws KVTIER_BAD_ARGUMENT unless [offset, offset + length) lies within [0, size). */
export function checkRange(offset: number, length: number, size: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw badArgument('offset', 'a non-negative integer', offset);
  }
  if (!Number.isSafeInteger(length) || length < 0) {
    throw badArgument('length', 'a non-negative integer', length);
  }
  if (offset + length > size) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${length} bytes at offset ${offset} do not fit ${size} bytes`,
    );
  }
}
