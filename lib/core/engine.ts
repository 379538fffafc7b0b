/**
 * File engines: many transfers packed into one descriptor batch, one native call, one promise.
 * The native side runs them on kvtier's own threads (never libuv's pool) and never calls back into
 * JavaScript per descriptor.
 */
import { abortError, errnoError, KvtierError } from './errors.js';
import { KvFile } from './file.js';
import { DeviceRegion } from './gpu/device-region.js';
import { native, type NativeEngine, type NativeTarget } from './native.js';
import { Region } from './region.js';
import {
  badArgument,
  boolean,
  guard,
  instance,
  integer,
  oneOf,
  options as readOptions,
  signal as checkSignal,
} from './validate.js';

/**
 * File engines are 'io_uring' or 'threads'; GPU engines are 'cuda' (copies between host and GPU
 * memory) and 'cufile' or 'posix' (files to and from GPU memory).
 */
export type EngineKind = 'io_uring' | 'threads' | 'cuda' | 'cufile' | 'posix';

export interface EngineOptions {
  /** `'auto'` (default) takes io_uring where the kernel allows it and says why not otherwise. */
  kind?: EngineKind | 'auto';
  /** io_uring: operations kept in the kernel at once. threads: the number of I/O threads,
   * which is also how many operations are in flight. Default 32. */
  queueDepth?: number;
  /** Thread count of the thread-pool engine (default: queueDepth). */
  threads?: number;
}

export interface ChecksumOption {
  /** Also compute the CRC-32C of the bytes moved, on the engine thread. */
  checksum?: boolean;
}

/**
 * Memory a transfer reads into or writes from. A plain buffer must stay attached while a
 * transfer that uses it is in flight: transferring it away (postMessage, structuredClone with a
 * transfer list) hands its bytes to someone else while the kernel still writes them.
 */
export type Target = Region | DeviceRegion | ArrayBufferView | ArrayBuffer;

/** What the addon takes for a target: the native object behind kvtier's own memory. */
export function nativeTargetOf(t: Target): NativeTarget {
  return t instanceof Region || t instanceof DeviceRegion ? t.native : t;
}

/** The host Region a target is or views (whose close must wait for it), if any. */
export function regionOf(t: Target): Region | undefined {
  if (t instanceof Region) return t;
  if (t instanceof DeviceRegion) return undefined;
  return Region.owning(ArrayBuffer.isView(t) ? t.buffer : t)?.region;
}

/** Throws KVTIER_BAD_ARGUMENT naming `name` unless `value` is memory a transfer can use. */
export function checkTarget(value: unknown, name: string): Target {
  const ok = guard(
    name,
    () =>
      value instanceof Region ||
      value instanceof DeviceRegion ||
      value instanceof ArrayBuffer ||
      ArrayBuffer.isView(value),
  );
  if (!ok)
    throw badArgument(name, 'a Region, a DeviceRegion, an ArrayBuffer or a view of one', value);
  return value as Target;
}

function checkFile(value: unknown, name = 'file'): KvFile {
  return instance(value, name, KvFile, 'a KvFile from openFile()');
}

function checksumOption(options: unknown): boolean {
  const { checksum } = readOptions<ChecksumOption>(options, 'options', ['checksum']);
  return checksum === undefined ? false : boolean(checksum, 'options.checksum');
}

/**
 * A file or memory offset, or a length. Only its type is checked here: whether it is a whole
 * number that fits is checked natively at submit, which refuses the whole batch.
 */
function offset(value: unknown, name: string): number {
  if (typeof value !== 'number') throw badArgument(name, 'a number', value);
  return value;
}

/** Memory kvtier allocated: closing it waits for the transfers that use it. */
type OwnedMemory = Region | DeviceRegion;

/** Descriptor op codes, as native/io/engine.cc reads them. */
const Op = { Read: 0, Write: 1, Sync: 2, Copy: 3, Checksum: 4 } as const;
type Op = (typeof Op)[keyof typeof Op];
/** Op-code flag: also return the CRC-32C of the bytes moved. */
const CRC = 16;
const STRIDE = 6;

/**
 * A set of transfers to submit together. Offsets and lengths are checked natively when the batch
 * is submitted; a batch with any bad descriptor is refused whole and moves nothing.
 */
export class TransferBatch {
  private descriptors = new Float64Array(STRIDE * 16);
  private count = 0;
  /** @internal */ readonly targets: NativeTarget[] = [];
  private readonly targetIndex = new Map<object, number>();
  /** @internal */ readonly files: KvFile[] = [];
  private readonly fileIndex = new Map<KvFile, number>();
  /** @internal */ readonly regions = new Set<OwnedMemory>();
  private readonly ops: Op[] = [];

  get length(): number {
    return this.count;
  }

  /** Reads `length` bytes at `fileOffset` into `target` at `targetOffset`. */
  read(
    file: KvFile,
    fileOffset: number,
    target: Target,
    targetOffset = 0,
    length?: number,
    options: ChecksumOption = {},
  ): this {
    return this.add(Op.Read, file, fileOffset, target, targetOffset, length, options);
  }

  /** Writes `length` bytes of `source` at `sourceOffset` to `fileOffset`. */
  write(
    file: KvFile,
    fileOffset: number,
    source: Target,
    sourceOffset = 0,
    length?: number,
    options: ChecksumOption = {},
  ): this {
    return this.add(Op.Write, file, fileOffset, source, sourceOffset, length, options);
  }

  /** Copies memory to memory on an engine thread (never on the event loop). */
  copy(
    target: Target,
    targetOffset: number,
    source: Target,
    sourceOffset: number,
    length: number,
    options: ChecksumOption = {},
  ): this {
    checkTarget(target, 'target');
    checkTarget(source, 'source');
    offset(targetOffset, 'targetOffset');
    offset(sourceOffset, 'sourceOffset');
    offset(length, 'length');
    const crc = checksumOption(options);
    const [t, toff] = this.resolve(target, targetOffset, length);
    const [s, soff] = this.resolve(source, sourceOffset, length);
    const op = Op.Copy | (crc ? CRC : 0);
    this.push(op, this.targetSlot(t), toff, length, this.targetSlot(s), soff);
    return this;
  }

  /**
   * @internal Many copies between the same two targets, from a copy plan: `runs` holds
   * `[a, b, length]` triples; each copies source offset `a` to target offset `b` ('a-to-b') or
   * source offset `b` to target offset `a` ('b-to-a'). One lookup per target, then a tight loop:
   * plans of thousands of pieces are built in microseconds, not milliseconds.
   */
  copyRuns(
    target: Target,
    source: Target,
    runs: Float64Array,
    direction: 'a-to-b' | 'b-to-a',
    options: ChecksumOption = {},
  ): this {
    const n = Math.floor(runs.length / 3);
    const code = Op.Copy | (options.checksum ? CRC : 0);
    let endA = 0;
    let endB = 0;
    for (let i = 0; i < n; i++) {
      const len = runs[3 * i + 2]!;
      endA = Math.max(endA, runs[3 * i]! + len);
      endB = Math.max(endB, runs[3 * i + 1]! + len);
    }
    const [srcEnd, dstEnd] = direction === 'a-to-b' ? [endA, endB] : [endB, endA];
    const [t, tbase] = this.resolve(target, 0, dstEnd);
    const [s, sbase] = this.resolve(source, 0, srcEnd);
    const ts = this.targetSlot(t);
    const ss = this.targetSlot(s);
    while ((this.count + n) * STRIDE > this.descriptors.length) {
      const grown = new Float64Array(this.descriptors.length * 2);
      grown.set(this.descriptors);
      this.descriptors = grown;
    }
    const d = this.descriptors;
    const [si, ti] = direction === 'a-to-b' ? [0, 1] : [1, 0];
    for (let i = 0; i < n; i++) {
      const at = (this.count + i) * STRIDE;
      d[at] = code;
      d[at + 1] = ts;
      d[at + 2] = tbase + runs[3 * i + ti]!;
      d[at + 3] = runs[3 * i + 2]!;
      d[at + 4] = ss;
      d[at + 5] = sbase + runs[3 * i + si]!;
      this.ops.push(Op.Copy);
    }
    this.count += n;
    return this;
  }

  /** Computes the CRC-32C of a memory range on an engine thread (see BatchResult.checksums). */
  checksum(target: Target, at: number, length: number): this {
    checkTarget(target, 'target');
    offset(at, 'offset');
    offset(length, 'length');
    const [t, off] = this.resolve(target, at, length);
    this.push(Op.Checksum, this.targetSlot(t), off, length, 0, 0);
    return this;
  }

  /** Makes the file's data durable (fdatasync), ordered after nothing: submit it in its own batch
   * after the writes it must cover have resolved. */
  sync(file: KvFile): this {
    checkFile(file);
    this.push(Op.Sync, 0, 0, 0, this.fileSlot(file), 0);
    return this;
  }

  /** @internal */
  packed(): Float64Array {
    return this.descriptors.subarray(0, this.count * STRIDE);
  }

  /** @internal */
  opAt(i: number): Op {
    return this.ops[i] ?? Op.Read;
  }

  private add(
    op: Op,
    file: KvFile,
    fileOffset: number,
    target: Target,
    targetOffset: number,
    length: number | undefined,
    options: ChecksumOption,
  ): this {
    checkFile(file);
    offset(fileOffset, 'fileOffset');
    checkTarget(target, op === Op.Read ? 'target' : 'source');
    offset(targetOffset, op === Op.Read ? 'targetOffset' : 'sourceOffset');
    const len = length === undefined ? target.byteLength - targetOffset : offset(length, 'length');
    const crc = checksumOption(options);
    const [where, at] = this.resolve(target, targetOffset, len);
    const code = op | (crc ? CRC : 0);
    this.push(code, this.targetSlot(where), at, len, this.fileSlot(file), fileOffset);
    return this;
  }

  /** A view of a Region is the Region itself, so closing the Region waits for this transfer. */
  private resolve(target: Target, offset: number, len: number): [Target, number] {
    if (target instanceof Region || target instanceof DeviceRegion) return [target, offset];
    if (target instanceof ArrayBuffer) {
      // region.buffer itself (or a slice of a large region): the region, so that closing it
      // waits for this transfer.
      const owner = Region.owning(target);
      if (owner && offset + len > target.byteLength) {
        throw new KvtierError(
          'KVTIER_BAD_ARGUMENT',
          `descriptor ${this.count}: ${len} bytes at offset ${offset} do not fit a buffer of ${target.byteLength} bytes`,
        );
      }
      return owner ? [owner.region, owner.base + offset] : [target, offset];
    }
    if (!ArrayBuffer.isView(target)) return [target, offset];
    const owner = Region.owning(target.buffer);
    if (!owner) return [target, offset];
    if (offset + len > target.byteLength) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `descriptor ${this.count}: ${len} bytes at offset ${offset} do not fit a view of ${target.byteLength} bytes`,
      );
    }
    return [owner.region, owner.base + target.byteOffset + offset];
  }

  private push(op: number, t: number, toff: number, len: number, f: number, foff: number): void {
    if ((this.count + 1) * STRIDE > this.descriptors.length) {
      const grown = new Float64Array(this.descriptors.length * 2);
      grown.set(this.descriptors);
      this.descriptors = grown;
    }
    const d = this.descriptors;
    const at = this.count * STRIDE;
    d[at] = op;
    d[at + 1] = t;
    d[at + 2] = toff;
    d[at + 3] = len;
    d[at + 4] = f;
    d[at + 5] = foff;
    this.ops.push((op & 0xf) as Op);
    this.count++;
  }

  private targetSlot(target: Target): number {
    let slot = this.targetIndex.get(target);
    if (slot === undefined) {
      slot = this.targets.length;
      if (target instanceof Region || target instanceof DeviceRegion) {
        target.assertOpen();
        this.regions.add(target);
        this.targets.push(target.native);
      } else {
        this.targets.push(target);
      }
      this.targetIndex.set(target, slot);
    }
    return slot;
  }

  private fileSlot(file: KvFile): number {
    let slot = this.fileIndex.get(file);
    if (slot === undefined) {
      file.assertOpen();
      slot = this.files.length;
      this.files.push(file);
      this.fileIndex.set(file, slot);
    }
    return slot;
  }
}

/** What happened to each descriptor of a batch, in order. */
export class BatchResult {
  /** Bytes moved per descriptor (short for a read that hit end of file; 0 when it failed). */
  readonly bytes: number[];
  /** The failure of each descriptor, or undefined where it succeeded. */
  readonly errors: (KvtierError | undefined)[];
  readonly failed: number;
  /** CRC-32C per descriptor where one was asked for (checksum ops, or { checksum: true }). */
  readonly checksums: number[] | undefined;

  /** @internal */
  constructor(raw: Float64Array, batch: TransferBatch, engineKind: EngineKind) {
    const n = batch.length;
    this.bytes = new Array<number>(n);
    this.errors = new Array<KvtierError | undefined>(n);
    this.checksums = raw.length === 2 * n && n > 0 ? Array.from(raw.subarray(n)) : undefined;
    let failed = 0;
    for (let i = 0; i < n; i++) {
      const v = raw[i] ?? 0;
      if (v < 0) {
        failed++;
        this.bytes[i] = 0;
        const op = batch.opAt(i);
        const file = batch.files[(batch.packed()[i * STRIDE + 4] ?? 0) | 0];
        const detail = (raw as { messages?: (string | undefined)[] }).messages?.[i];
        this.errors[i] = errnoError(
          -v,
          syscallName(engineKind, op),
          `descriptor ${i}: ${opName(op)} on ${file?.path ?? 'a file'} failed` +
            (detail === undefined ? '' : ` (${detail})`),
        );
      } else {
        this.bytes[i] = v;
      }
    }
    this.failed = failed;
  }

  get ok(): boolean {
    return this.failed === 0;
  }

  /** Throws the first failure, if any. */
  throwIfFailed(): void {
    const first = this.errors.find((e) => e !== undefined);
    if (first) throw first;
  }
}

function opName(op: Op): string {
  return ['read', 'write', 'sync', 'copy', 'checksum'][op] ?? 'op';
}

function syscallName(kind: EngineKind, op: Op): string {
  if (kind === 'io_uring') return `io_uring:${opName(op)}`;
  if (kind === 'cufile')
    return op === Op.Read ? 'cuFileRead' : op === Op.Write ? 'cuFileWrite' : 'fdatasync';
  if (kind === 'cuda') return 'cuMemcpyAsync';
  return op === Op.Read ? 'pread' : op === Op.Write ? 'pwrite' : 'fdatasync';
}

export class IoEngine {
  /** Why this kind was chosen (for `kind: 'auto'`), e.g. why io_uring was not. */
  readonly reason: string;
  private readonly native: NativeEngine;
  private closing: Promise<void> | undefined;
  private pending = 0;
  private drainWaiters: (() => void)[] = [];

  /** @internal */
  constructor(nativeEngine: NativeEngine, reason: string) {
    this.native = nativeEngine;
    this.reason = reason;
  }

  get kind(): EngineKind {
    return this.native.kind;
  }

  get queueDepth(): number {
    return this.native.queueDepth;
  }

  /** Runs every transfer of the batch; resolves with a status per descriptor. */
  async submit(batch: TransferBatch, options: { signal?: AbortSignal } = {}): Promise<BatchResult> {
    instance(batch, 'batch', TransferBatch, 'a TransferBatch');
    const signal = checkSignal(
      readOptions(options, 'options', ['signal']).signal,
      'options.signal',
    );
    if (this.closing) throw new KvtierError('KVTIER_CLOSED', 'engine is closed');
    // Once in the kernel a transfer cannot be recalled, so a signal can only stop it beforehand.
    if (signal?.aborted) throw abortError(signal);
    for (const file of batch.files) file.assertOpen();
    for (const region of batch.regions) region.assertOpen();
    const promise = this.native.submit(
      batch.packed(),
      batch.targets,
      batch.files.map((f) => f.native),
    );
    this.begin(batch);
    try {
      return new BatchResult(await promise, batch, this.kind);
    } finally {
      this.end(batch);
    }
  }

  /** Reads into `target`; resolves with the bytes read (fewer at end of file). */
  async read(
    file: KvFile,
    fileOffset: number,
    target: Target,
    targetOffset = 0,
    length?: number,
  ): Promise<number> {
    const result = await this.submit(
      new TransferBatch().read(file, fileOffset, target, targetOffset, length),
    );
    result.throwIfFailed();
    return result.bytes[0] ?? 0;
  }

  /** Writes from `source`; resolves with the bytes written. */
  async write(
    file: KvFile,
    fileOffset: number,
    source: Target,
    sourceOffset = 0,
    length?: number,
  ): Promise<number> {
    const result = await this.submit(
      new TransferBatch().write(file, fileOffset, source, sourceOffset, length),
    );
    result.throwIfFailed();
    return result.bytes[0] ?? 0;
  }

  /** Makes the file's written data durable. */
  async sync(file: KvFile): Promise<void> {
    (await this.submit(new TransferBatch().sync(file))).throwIfFailed();
  }

  /** Lets submitted batches finish, then stops the engine's threads. Idempotent. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      if (this.pending === 0) resolve();
      else this.drainWaiters.push(resolve);
    }).then(() => this.native.close());
    return this.closing;
  }

  private begin(batch: TransferBatch): void {
    this.pending++;
    for (const file of batch.files) file.inFlight.begin();
    for (const region of batch.regions) region.inFlight.begin();
  }

  private end(batch: TransferBatch): void {
    for (const file of batch.files) file.inFlight.end();
    for (const region of batch.regions) region.inFlight.end();
    if (--this.pending === 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const wake of waiters) wake();
    }
  }
}

/** Opens a file engine. */
export function createEngine(given: EngineOptions = {}): IoEngine {
  const options = checkEngineOptions(given);
  const addon = native();
  // checkEngineOptions let through only the kinds a file engine can be.
  const asked = (options.kind ?? 'auto') as 'auto' | 'io_uring' | 'threads';
  let kind: EngineKind = asked === 'auto' ? 'io_uring' : asked;
  let reason = asked === 'auto' ? 'io_uring is usable' : `${asked} was requested`;
  if (asked === 'auto') {
    const uring = addon.probe().ioUring;
    if (!uring.available) {
      kind = 'threads';
      reason = `io_uring is not usable (${uring.reason ?? 'unknown'}); using the thread pool`;
    }
  }
  const queueDepth =
    kind === 'threads' ? (options.threads ?? options.queueDepth ?? 32) : (options.queueDepth ?? 32);
  return new IoEngine(new addon.NativeEngine({ kind, queueDepth }), reason);
}

/** Reads and checks a file engine's options (also used by Warehouse.open). */
export function checkEngineOptions(given: unknown, name = 'options'): EngineOptions {
  const options = readOptions<EngineOptions>(given, name, ['kind', 'queueDepth', 'threads']);
  if (options.kind !== undefined) {
    oneOf(options.kind, `${name}.kind`, ['auto', 'io_uring', 'threads'] as const);
  }
  // The native side caps both at 4096 and says so.
  if (options.queueDepth !== undefined)
    integer(options.queueDepth, `${name}.queueDepth`, { min: 1 });
  if (options.threads !== undefined) integer(options.threads, `${name}.threads`, { min: 1 });
  return options;
}
