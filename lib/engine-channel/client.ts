/**
 * A Node client of the engine channel: what the tests and `kvtier bench engine` use to act as an
 * engine (the Python client in python/kvtier/ is the one engines use). Requests may be in flight
 * together; when the connection drops every waiting request fails at once with KVTIER_CLOSED.
 */
import { closeSync, ftruncateSync, openSync, unlinkSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';

import { type ErrorCode, ErrorCodes, KvtierError } from '../core/errors.js';
import type { KvLayoutSpec } from '../layout/index.js';
import { Region } from '../core/region.js';
import { encodeFrame, FrameReader, type Header } from './frames.js';
import type { SaveStatus } from './put-status.js';

export interface EngineClientOptions {
  /** Free text the server logs. */
  name?: string;
  /** How long to wait for the connection and the server's hello (default 30 s). */
  timeoutMs?: number;
}

/**
 * Host memory shared with the server by descriptor: a file created in /dev/shm (unlinked at once,
 * like a memfd), kept open, and mapped here too.
 */
export class HostPoolFile {
  private constructor(
    readonly fd: number,
    readonly region: Region,
  ) {}

  static create(bytes: number, dir = '/dev/shm'): HostPoolFile {
    const path = join(dir, `kvtier-pool-${process.pid}-${Math.random().toString(36).slice(2)}`);
    const fd = openSync(path, 'w+', 0o600);
    try {
      unlinkSync(path);
      ftruncateSync(fd, bytes);
      return new HostPoolFile(fd, Region.mapShared(`/proc/self/fd/${fd}`, bytes));
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  get bytes(): number {
    return this.region.byteLength;
  }

  view(offset = 0, length?: number): Uint8Array {
    return this.region.view(offset, length);
  }

  async close(): Promise<void> {
    await this.region.close();
    closeSync(this.fd);
  }
}

interface Waiter {
  resolve(h: Header): void;
  reject(e: Error): void;
}

function codeOf(v: unknown): ErrorCode {
  return (ErrorCodes as readonly unknown[]).includes(v) ? (v as ErrorCode) : 'KVTIER_PEER';
}

/** Keys back to back; all must have one size (16 to 32 bytes). */
function packKeys(keys: readonly Uint8Array[]): { payload: Buffer; keyBytes: number } {
  const keyBytes = keys[0]?.byteLength ?? 32;
  const payload = Buffer.allocUnsafe(keys.length * keyBytes);
  keys.forEach((k, i) => {
    if (k.byteLength !== keyBytes) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', 'all keys of a request must have one size');
    }
    payload.set(k, i * keyBytes);
  });
  return { payload, keyBytes };
}

/**
 * The optional header fields of save, load and lookup for the Warehouse's policies
 * (docs/engine-channel.md): the engine's conversation, its hint, and its request id.
 */
export interface ChannelCall {
  session?: string | number;
  hint?: 'soon' | 'closed';
  request?: string | number;
}

export class EngineClient {
  blockBytes = 0;
  maxBatch = 0;
  serverPid = 0;
  private readonly socket: Socket;
  private readonly reader = new FrameReader();
  private readonly waiting = new Map<number, Waiter>();
  private nextId = 1;
  private failure: KvtierError | undefined;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e) =>
      this.fail(new KvtierError('KVTIER_CLOSED', `connection failed: ${e.message}`, { cause: e })),
    );
    socket.on('close', () =>
      this.fail(new KvtierError('KVTIER_CLOSED', 'the kvtier server closed the connection')),
    );
  }

  static async connect(path: string, options: EngineClientOptions = {}): Promise<EngineClient> {
    const socket = connect(path);
    const client = new EngineClient(socket);
    const timeoutMs = options.timeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        socket.destroy();
        reject(new KvtierError('KVTIER_TIMEOUT', `no answer from ${path} within ${timeoutMs} ms`));
      }, timeoutMs);
    });
    try {
      const hello = await Promise.race([
        client.request({ op: 'hello', version: 1, name: options.name ?? '' }),
        timeout,
      ]);
      client.blockBytes = hello.blockBytes as number;
      client.maxBatch = hello.maxBatch as number;
      client.serverPid = hello.pid as number;
      return client;
    } catch (e) {
      socket.destroy();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Why the connection ended (the server's refusal, or KVTIER_CLOSED); undefined while open. */
  get failed(): KvtierError | undefined {
    return this.failure;
  }

  /** Sends one request; resolves with the answer's header, or rejects with its error. */
  request(header: Header, payload?: Uint8Array): Promise<Header> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise<Header>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      try {
        for (const b of encodeFrame({ ...header, id }, payload)) this.socket.write(b);
      } catch (e) {
        this.waiting.delete(id);
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
  }

  /** Writes raw bytes (tests of malformed frames). */
  writeRaw(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  async registerHostPool(
    pool: HostPoolFile,
    layout: KvLayoutSpec,
    name = 'kv',
  ): Promise<{ pool: string; numBlocks: number; blockBytes: number }> {
    const a = await this.request({
      op: 'register',
      pool: name,
      memory: { kind: 'memfd', fd: pool.fd, bytes: pool.bytes },
      layout,
    });
    return {
      pool: a.pool as string,
      numBlocks: a.numBlocks as number,
      blockBytes: a.blockBytes as number,
    };
  }

  async release(pool: string): Promise<void> {
    await this.request({ op: 'release', pool });
  }

  async lookup(
    keys: readonly Uint8Array[],
    call: ChannelCall = {},
  ): Promise<{ prefix: number; present: boolean[] }> {
    const { payload, keyBytes } = packKeys(keys);
    const a = await this.request({ op: 'lookup', keyBytes, n: keys.length, ...call }, payload);
    return { prefix: a.prefix as number, present: a.present as boolean[] };
  }

  async save(
    pool: string,
    keys: readonly Uint8Array[],
    blocks: readonly number[],
    priority?: number,
    call: ChannelCall = {},
  ): Promise<{ status: SaveStatus[]; stored: number; present: number; rejected: number }> {
    const { payload, keyBytes } = packKeys(keys);
    const a = await this.request(
      {
        op: 'save',
        pool,
        blocks,
        keyBytes,
        ...(priority === undefined ? {} : { priority }),
        ...call,
      },
      payload,
    );
    return {
      status: a.status as SaveStatus[],
      stored: a.stored as number,
      present: a.present as number,
      rejected: a.rejected as number,
    };
  }

  async load(
    pool: string,
    keys: readonly Uint8Array[],
    blocks: readonly number[],
    call: ChannelCall = {},
  ): Promise<{ loaded: boolean[]; prefix: number }> {
    const { payload, keyBytes } = packKeys(keys);
    const a = await this.request({ op: 'load', pool, blocks, keyBytes, ...call }, payload);
    return { loaded: a.loaded as boolean[], prefix: a.prefix as number };
  }

  async pin(
    keys: readonly Uint8Array[],
    ttlMs?: number,
  ): Promise<{ lease: number; expiresAt: number }> {
    const { payload, keyBytes } = packKeys(keys);
    const a = await this.request(
      { op: 'pin', keyBytes, n: keys.length, ...(ttlMs === undefined ? {} : { ttlMs }) },
      payload,
    );
    return { lease: a.lease as number, expiresAt: a.expiresAt as number };
  }

  async unpin(lease: number): Promise<void> {
    await this.request({ op: 'unpin', lease });
  }

  /** Removes blocks from every tier (pinned ones stay); resolves with the number removed. */
  async evict(keys: readonly Uint8Array[]): Promise<number> {
    const { payload, keyBytes } = packKeys(keys);
    const a = await this.request({ op: 'evict', keyBytes, n: keys.length }, payload);
    return a.evicted as number;
  }

  async stats(): Promise<{ stats: Record<string, unknown>; engine: Record<string, number> }> {
    const a = await this.request({ op: 'stats' });
    return {
      stats: a.stats as Record<string, unknown>,
      engine: a.engine as Record<string, number>,
    };
  }

  /** Closes the connection; requests still waiting fail with KVTIER_CLOSED. */
  close(): void {
    this.fail(new KvtierError('KVTIER_CLOSED', 'the client closed the connection'));
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    let frames;
    try {
      frames = this.reader.push(chunk);
    } catch (e) {
      this.fail(
        new KvtierError('KVTIER_PROTOCOL', `bad frame from the server: ${(e as Error).message}`),
      );
      this.socket.destroy();
      return;
    }
    for (const { header } of frames) {
      const id = header.id as number;
      const error = header.ok
        ? undefined
        : new KvtierError(
            codeOf(header.code),
            typeof header.message === 'string' ? header.message : 'request failed',
          );
      if (id === 0) {
        // The server refused the connection or a frame: everything waiting fails with its word.
        this.fail(error ?? new KvtierError('KVTIER_PROTOCOL', 'an answer with id 0'));
        continue;
      }
      const w = this.waiting.get(id);
      if (!w) continue;
      this.waiting.delete(id);
      if (error) w.reject(error);
      else w.resolve(header);
    }
  }

  private fail(error: KvtierError): void {
    this.failure ??= error;
    const waiting = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of waiting) w.reject(error);
  }
}
