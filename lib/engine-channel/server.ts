/**
 * The engine channel of `kvtier serve`: a Unix-domain socket, owner-only by default, through which
 * engine processes on this host register their KV pools and save, look up and load blocks in
 * place (docs/engine-channel.md).
 */
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';

import { KvtierError } from '../core/errors.js';
import type { Warehouse } from '../warehouse/warehouse.js';
import { ChannelContext, type EngineCounters, type Log, type RequestObserver } from './context.js';
import { Session } from './session.js';

export interface EngineChannelOptions {
  path: string;
  /** Permission bits of the socket file (default 0o600: only this user's engines). */
  mode?: number;
  warehouse: Warehouse;
  log?: Log;
  /** Told of each request served, with its latency (`kvtier serve --metrics`). */
  observe?: RequestObserver;
}

/** Whether something answers on the socket at `path` (a live server we must not replace). */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Removes a socket file left by a server that died; refuses a live one or another file. */
async function clearStale(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return; // nothing there
  }
  if (!isSocket) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `${path} exists and is not a socket`);
  }
  if (await answers(path)) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `another server is listening on ${path}`);
  }
  unlinkSync(path);
}

export class EngineChannel {
  readonly path: string;
  readonly maxBatch: number;
  private readonly ctx: ChannelContext;
  private readonly server: Server;
  private readonly sessions = new Set<Session>();

  private constructor(path: string, ctx: ChannelContext, server: Server) {
    this.path = path;
    this.ctx = ctx;
    this.server = server;
    this.maxBatch = ctx.maxBatch;
  }

  static async start(options: EngineChannelOptions): Promise<EngineChannel> {
    const mode = options.mode ?? 0o600;
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', `socket mode must be 0 to 0777, got ${mode}`);
    }
    await clearStale(options.path);
    const ctx = new ChannelContext(options.warehouse, options.log ?? (() => {}), options.observe);
    const server = createServer({ allowHalfOpen: false });
    const channel = new EngineChannel(options.path, ctx, server);
    server.on('connection', (socket) => {
      const session = Session.accept(ctx, socket);
      if (!session) return;
      channel.sessions.add(session);
      socket.once('close', () => channel.sessions.delete(session));
    });
    // Bound with an owner-only umask (Node binds a path synchronously inside listen()), so no
    // other user can connect before chmod sets the mode asked for.
    const listening = new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.once('listening', () => {
        server.off('error', reject);
        resolve();
      });
    });
    const umask = process.umask(0o177);
    try {
      server.listen(options.path);
    } finally {
      process.umask(umask);
    }
    await listening;
    chmodSync(options.path, mode);
    return channel;
  }

  get counters(): Readonly<EngineCounters> {
    return this.ctx.counters;
  }

  /** Stops accepting, ends every connection (their pools unmap once idle), frees buffers. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sessions) s.close();
    await closed;
    await this.ctx.close();
  }
}
