/** Files that the engines read and write, with O_DIRECT by default. */
import { KvtierError } from './errors.js';
import { InFlight } from './inflight.js';
import { native, type NativeFile } from './native.js';
import { boolean, integer, oneOf, options as readOptions, string } from './validate.js';

export interface OpenFileOptions {
  /** Create the file when missing. */
  create?: boolean;
  /** Empty the file on open. */
  truncate?: boolean;
  readOnly?: boolean;
  /**
   * Bypass the page cache. `true` (default) fails with KVTIER_NOT_AVAILABLE where the filesystem
   * refuses O_DIRECT, and refuses requests whose file offset or length is not aligned. `'auto'`
   * falls back to buffered I/O for such a filesystem or such a request, and says so in
   * `direct`/`directReason`. `false` always uses the page cache.
   */
  direct?: boolean | 'auto';
  /** Preallocate at least this many bytes (fallocate), so a full disk shows up now. */
  size?: number;
}

export class KvFile {
  /** @internal */
  readonly native: NativeFile;
  /** @internal */
  readonly inFlight = new InFlight();
  private closing: Promise<void> | undefined;

  /** @internal */
  constructor(nativeFile: NativeFile) {
    this.native = nativeFile;
  }

  get path(): string {
    return this.native.path;
  }

  /** Whether I/O bypasses the page cache. */
  get direct(): boolean {
    return this.native.direct;
  }

  /** Why `direct` is false although O_DIRECT was allowed; empty otherwise. */
  get directReason(): string {
    return this.native.directReason;
  }

  /** Alignment O_DIRECT needs for file offsets and lengths (1 when buffered). */
  get offsetAlign(): number {
    return this.native.offsetAlign;
  }

  /** Alignment O_DIRECT needs for memory addresses; misaligned buffers go through a bounce buffer. */
  get memAlign(): number {
    return this.native.memAlign;
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  /** Current size in bytes. */
  size(): number {
    this.assertOpen();
    return this.native.size();
  }

  /** Waits for transfers on the file, then closes it. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.inFlight.drained().then(() => this.native.close());
    return this.closing;
  }

  /** @internal */
  assertOpen(): void {
    if (this.closing) throw new KvtierError('KVTIER_CLOSED', `file ${this.path} is closed`);
  }
}

/** Opens a file for the engines. Refusals reject; nothing is created when the open fails. */
export function openFile(path: string, options: OpenFileOptions = {}): Promise<KvFile> {
  // Today the open itself is synchronous (it costs one open and one fallocate); the promise keeps
  // the door open to doing it on kvtier's threads without changing callers.
  return new Promise((resolve) => resolve(openFileNow(path, options)));
}

function openFileNow(path: string, given: OpenFileOptions): KvFile {
  string(path, 'path');
  const options = readOptions<OpenFileOptions>(given, 'options', [
    'create',
    'truncate',
    'readOnly',
    'direct',
    'size',
  ]);
  const direct = oneOf(options.direct ?? true, 'direct', [true, false, 'auto']);
  const addon = native();
  const nativeOptions: ConstructorParameters<typeof addon.NativeFile>[1] = {
    create: boolean(options.create ?? false, 'create'),
    truncate: boolean(options.truncate ?? false, 'truncate'),
    readOnly: boolean(options.readOnly ?? false, 'readOnly'),
    direct: direct === 'auto' ? 'auto' : direct ? 'on' : 'off',
  };
  if (options.size !== undefined) nativeOptions.size = integer(options.size, 'size');
  return new KvFile(new addon.NativeFile(path, nativeOptions));
}
