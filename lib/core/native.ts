/**
 * Loads the native addon: a local build when there is one, else the prebuilt binary for this
 * platform (see candidates()). Loading is lazy so `kvtier info` can still report why the
 * addon is missing.
 */
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { KvtierError } from './errors.js';

export interface LibraryStatus {
  available: boolean;
  reason?: string;
  loaded: boolean;
  path?: string;
  version?: string;
}

export interface NativeProbe {
  addonVersion: string;
  cpus: number;
  pageSize: number;
  ioUring: { available: boolean; reason?: string; compiled: boolean; liburingVersion?: string };
  cuda: LibraryStatus & {
    driverVersion?: number;
    devices: {
      ordinal: number;
      name: string;
      pciBusId: string;
      memoryBytes: number;
      computeCapability: string;
    }[];
  };
  cufile: LibraryStatus & { mode?: 'gds' | 'compat'; modeReason?: string };
  ibverbs: LibraryStatus & { devices: { name: string; guid: string; transport: string }[] };
}

export interface DirectProbe {
  available: boolean;
  reason?: string;
  memAlign?: number;
  offsetAlign?: number;
}

export interface NativeRegion {
  readonly buffer: ArrayBuffer;
  slice(offset: number, length: number): ArrayBuffer;
  readonly pinned: boolean;
  readonly pinReason: string;
  readonly byteLength: number;
  readonly closed: boolean;
  /** "<dev>:<inode>" of a shared file mapping; empty for allocated memory. */
  readonly fileId: string;
  close(): void;
}

export interface NativeFile {
  readonly path: string;
  readonly direct: boolean;
  readonly directReason: string;
  readonly memAlign: number;
  readonly offsetAlign: number;
  readonly closed: boolean;
  size(): number;
  lock(): void;
  close(): void;
}

export interface NativeDeviceRegion {
  readonly byteLength: number;
  readonly device: number;
  readonly pointer: bigint;
  readonly origin: 'owned' | 'wrapped' | 'imported';
  ipcHandle(): { handle: Uint8Array; offset: number };
  close(): void;
}

export type NativeTarget = NativeRegion | NativeDeviceRegion | ArrayBufferView | ArrayBuffer;

export interface NativeEngine {
  readonly kind: 'io_uring' | 'threads' | 'cuda' | 'cufile' | 'posix';
  readonly queueDepth: number;
  readonly inFlight: number;
  submit(
    descriptors: Float64Array,
    targets: NativeTarget[],
    files: NativeFile[],
  ): Promise<Float64Array>;
  close(): void;
}

/** One event from the native TCP transport's thread (native/net/tcp_transport.h). */
export interface NetEvent {
  kind: 1 | 2 | 3 | 4 | 5 | 6; // accepted, connected, frame, sent, closed, refused
  conn: number;
  listener?: number;
  type?: number;
  flags?: number;
  requestId?: number;
  meta?: Buffer;
  payload?: Buffer;
  payloadBytes?: number;
  placed?: boolean;
  area?: number;
  /** Payloads that landed in landing pieces: their tokens, in order. */
  landed?: Uint32Array;
  /** Placed payloads: CRC-32C of each destination filled, in order. */
  checksums?: Uint32Array;
  /** Bytes this frame counts against its connection's backpressure until released. */
  held?: number;
  token?: number;
  errno?: number;
  text?: string;
}

export interface NativeTcpTransport {
  listen(host: string, port: number, backlog?: number): { id: number; port: number };
  connect(host: string, port: number): number;
  send(
    conn: number,
    head: Uint8Array,
    targets: NativeTarget[],
    spans: Float64Array | undefined,
    token: number,
    notify: boolean,
    expectType?: number,
    expectRequestId?: number,
    expectSpans?: Float64Array,
  ): void;
  setLimits(
    conn: number,
    maxMeta: number,
    maxPayload: number,
    maxQueued?: number,
    answerType?: number,
    answerUnit?: number,
  ): void;
  provide(region: NativeRegion, offset: number, length: number, token: number): void;
  land(target: NativeTarget, offset: number, length: number, token: number, type: number): void;
  unland(): number[];
  release(conn: number, bytes: number): void;
  closeConnection(conn: number, why: string): void;
  closeListener(listener: number): void;
  ref(): void;
  unref(): void;
  close(): void;
  stats(): NetStats;
}

/** Counters of a native TCP transport (TcpTransport::Stats). */
export interface NetStats {
  /** Times a connection stopped being read (backpressure). */
  pauses: number;
  /** Most bytes one connection had held by JavaScript (frames and reserved answers). */
  maxHeld: number;
  /** Most bytes one connection had queued to write, and the bytes queued now in all. */
  maxOutQueued: number;
  outQueued: number;
  /** Connections closed in their handshake to make room for newer ones. */
  handshakesEvicted: number;
  /** Connections refused: the authenticated ones were at their limit. */
  refused: number;
  /** Connections closed for a partly received frame left idle (payloadTimeoutMs). */
  stalled: number;
  /** ERROR frames the transport itself sent before closing a connection. */
  errorFrames: number;
  /** Landing pieces payloads were read into, and of those, pieces of payloads cut short. */
  landingTaken: number;
  landingReturned: number;
}

/** RDMA verbs for the peer protocol (native/net/verbs_link.h). */
export interface NativeVerbs {
  readonly device: string;
  /** A new RC queue pair and its 28-byte wire address (docs/protocol.md, VERBS_CONNECT). */
  createQueuePair(): { id: number; address: Buffer };
  connectQueuePair(id: number, remote: Uint8Array): void;
  destroyQueuePair(id: number): void;
  /**
   * Registers a Region's memory for the peer (cached per region and access; role 'server' only):
   * 'read' lends it to the peer's RDMA READs only, 'write' to its RDMA WRITEs (and READs). The
   * address is that of the target's first byte.
   */
  register(target: NativeTarget, access: 'read' | 'write'): { address: number; rkey: number };
  /**
   * Six numbers per work request: opcode (0 READ, 1 WRITE), target index, target offset,
   * length, remote address, remote key. Rejects with KVTIER_PEER when any fails.
   */
  post(qp: number, ops: Float64Array, targets: NativeTarget[]): Promise<void>;
  close(): void;
}

/** The GPU copy engine (native/gpu/copy_engine.h); lib/core/gpu/engines.ts is its face. */
export type NativeCopyEngine = NativeEngine & {
  readonly batchCopy: boolean;
  readonly kernelPath: string;
  /** '' when the decode kernels loaded, else why not. */
  readonly decodePath: string;
  /** Encoded blocks in pinned host memory to decoded ones in GPU memory (copy_engine_codec.cc). */
  decode(
    params: CodecParams,
    src: NativeRegion,
    srcOffset: number,
    dst: NativeDeviceRegion,
    dstOffset: number,
    blocks: number,
  ): Promise<Float64Array>;
};

/** What the native side takes, and what a block's header says. */
export interface CodecParams {
  codec: 'fp8-e4m3' | 'int8' | 'kivi2' | 'kivi4';
  dtype: 'fp16' | 'bf16' | 'fp32';
  layers: number;
  tokens: number;
  heads: number;
  dim: number;
  group: number;
  scales: 'none' | 'token' | 'kivi';
}

/** kvtier's codec threads (native/codec/codec_pool.h); lib/core/codec.ts is their face. */
export interface NativeCodecPool {
  /**
   * Encodes or decodes `blocks` consecutive blocks of src into dst on the pool's threads; rejects
   * with the synchronous calls' KvtierError codes. Decode checks every header before queueing.
   */
  run(
    op: 'encode' | 'decode',
    params: CodecParams,
    src: Uint8Array,
    dst: Uint8Array,
    blocks: number,
    isa?: 'scalar' | 'auto',
  ): Promise<void>;
  readonly threads: number;
  /** Calls queued and not yet settled. */
  readonly inFlight: number;
  close(): void;
}

export interface NativeAddon {
  init(errorClass: typeof KvtierError): void;
  probe(): NativeProbe;
  probeDirect(dir: string): DirectProbe;
  chainHash(tokens: Uint32Array, blockTokens: number, root: Uint8Array): Buffer;
  /** Lowercase hex of bytes [start, end) (default: all of them). */
  hex(bytes: ArrayBufferView, start?: number, end?: number): string;
  crc32c(data: ArrayBufferView, seed?: number): number;
  /** One entry per whole header in data (native/io/slot_header_js.h). */
  decodeSlotHeaders(
    data: Uint8Array,
    headerBytes: number,
    blockBytes: number,
  ): {
    /** 0 empty, 1 valid, 2 torn (fails its CRC), 3 bad (CRC holds, a field is impossible). */
    status: Uint8Array;
    keyLength: Uint8Array;
    /** 32 bytes a slot, the key first. */
    keys: Buffer;
    length: Float64Array;
    checksum: Uint32Array;
    generation: Float64Array;
  };
  /** KV block codecs (native/codec/codec_js.h); lib/core/codec.ts is their face. */
  codecEncode(
    params: CodecParams,
    src: Uint8Array,
    dst: Uint8Array,
    blocks: number,
    isa?: 'scalar' | 'auto',
  ): void;
  codecDecode(
    params: CodecParams,
    src: Uint8Array,
    dst: Uint8Array,
    blocks: number,
    isa?: 'scalar' | 'auto',
  ): void;
  codecSizes(params: CodecParams): { decodedBytes: number; encodedBytes: number };
  codecReadHeader(src: Uint8Array): CodecParams;
  codecIsa(): string;
  /** The GPU decode kernels' arithmetic run on the CPU (native/gpu/codec_reference.h), for tests. */
  gpuCodecReference(params: CodecParams, src: Uint8Array, dst: Uint8Array, blocks: number): void;
  NativeCodecPool: new (options: { threads: number }) => NativeCodecPool;
  verbsProbe(options: { device?: string; port?: number }): {
    available: boolean;
    reason?: string;
    device?: string;
    port?: number;
    linkLayer?: string;
    lid?: number;
  };
  NativeRegion: new (
    bytes: number | { path: string; bytes: number },
    pin: 'auto' | 'on' | 'off',
    maxArrayBuffer: number,
  ) => NativeRegion;
  /** getsockopt(SO_PEERCRED) on a connected Unix-domain socket's descriptor. */
  peerCredentials(fd: number): { pid: number; uid: number; gid: number };
  NativeFile: new (
    path: string,
    options: {
      create?: boolean;
      truncate?: boolean;
      readOnly?: boolean;
      direct?: 'on' | 'off' | 'auto';
      size?: number;
    },
  ) => NativeFile;
  NativeEngine: new (options: { kind: 'io_uring' | 'threads'; queueDepth: number }) => NativeEngine;
  NativeDeviceRegion: new (
    options:
      | { origin: 'owned'; device: number; bytes: number }
      | { origin: 'wrapped'; device: number; pointer: bigint; bytes: number }
      | { origin: 'imported'; device: number; handle: Uint8Array; offset: number; bytes: number },
  ) => NativeDeviceRegion;
  NativeCopyEngine: new (options: {
    device: number;
    streams: number;
    batch: boolean;
    kernel: boolean;
    decodeStagingBytes?: number;
  }) => NativeCopyEngine;
  NativeGpuFileEngine: new (options: {
    device: number;
    io: 'cufile' | 'posix';
    threads: number;
    chunkBytes: number;
    fallback: boolean;
  }) => NativeEngine & { readonly fallbacks: number };
  /**
   * role 'client' (default): its queue pairs grant the peer no access and it lends no memory;
   * 'server': its queue pairs accept the peer's RDMA READ and WRITE, and it registers memory.
   */
  NativeVerbs: new (options: {
    device?: string;
    port?: number;
    role?: 'client' | 'server';
  }) => NativeVerbs;
  NativeTcpTransport: new (
    options: { maxConnections?: number; maxHandshakes?: number; payloadTimeoutMs?: number },
    onEvents: (events: NetEvent[]) => void,
  ) => NativeTcpTransport;
}

/** The package root: this file is lib/core/native.ts (dist/core/native.js), two levels below it. */
export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

let loaded: NativeAddon | undefined;
let loadError: Error | undefined;

/** Where the addon was loaded from, once it was. */
export let addonPath: string | undefined;

/** The prebuilt Node-API binary shipped for this platform, if any (prebuildify's layout). */
function prebuiltPath(): string | undefined {
  const dir = join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`);
  if (!existsSync(dir)) return undefined;
  const name = readdirSync(dir).find((f) => f.endsWith('.node'));
  return name === undefined ? undefined : join(dir, name);
}

/** Whether `path` is a prebuilt binary of this package (prebuildify's folder). */
export function isPrebuilt(path: string): boolean {
  return path.startsWith(join(packageRoot, 'prebuilds'));
}

/**
 * Why the addon in use is a local build rather than a prebuilt one (for `kvtier info`), or
 * undefined when a prebuilt binary was loaded or none was tried.
 */
export let localBuildReason: string | undefined;

/**
 * Candidates in order of preference: an explicit KVTIER_ADDON (sanitizer builds, tests), a local
 * build when there is one (a checkout being worked on must run what it just compiled, as
 * node-gyp-build also prefers), then the prebuilt binary. An installed package has no local build
 * unless its prebuilt binary did not fit, so there the prebuilt one is used.
 */
function candidates(require: NodeJS.Require): string[] {
  if (process.env.KVTIER_ADDON) return [process.env.KVTIER_ADDON];
  const list: string[] = [];
  const local = join(packageRoot, 'build', 'Release', 'kvtier.node');
  const prebuilt = prebuiltPath();
  if (existsSync(local)) list.push(local);
  if (prebuilt) list.push(prebuilt);
  if (list.length === 0) {
    // Neither: node-gyp-build's own search names what it looked for in its error.
    const build = require('node-gyp-build') as { path(dir: string): string };
    list.push(build.path(packageRoot));
  }
  localBuildReason =
    prebuilt === undefined
      ? `no prebuilt binary for ${process.platform}-${process.arch} in this package`
      : existsSync(local)
        ? 'build/Release holds a local build, which wins over a prebuilt binary'
        : undefined;
  return list;
}

export function native(): NativeAddon {
  if (loaded) return loaded;
  if (loadError) throw loadError;
  const require = createRequire(import.meta.url);
  try {
    const failures: string[] = [];
    for (const path of candidates(require)) {
      try {
        const addon = require(path) as NativeAddon;
        addon.init(KvtierError);
        addonPath = path;
        if (isPrebuilt(path)) localBuildReason = undefined;
        else if (failures.length > 0) {
          localBuildReason = `the prebuilt binary could not be loaded: ${failures.join('; ')}`;
        }
        loaded = addon;
        return addon;
      } catch (e) {
        // A prebuilt binary for another libc or an older Node-API falls through to the build.
        failures.push(`${path}: ${(e as Error).message}`);
      }
    }
    throw new Error(failures.join('; '));
  } catch (e) {
    loadError = new KvtierError(
      'KVTIER_NOT_AVAILABLE',
      `the kvtier native addon could not be loaded: ${(e as Error).message}`,
      { cause: e },
    );
    throw loadError;
  }
}
