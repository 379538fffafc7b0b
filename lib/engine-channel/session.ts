/**
 * One engine's connection: checks who connected (SO_PEERCRED), reads frames, runs each request
 * (many may be in flight; answers go back in completion order), and on disconnect releases the
 * engine's pools and leases. Its saved blocks stay in the Warehouse.
 */
import type { Socket } from 'node:net';

import { isKvtierError, KvtierError } from '../core/errors.js';
import { native } from '../core/native.js';
import type { ChannelContext, SessionState } from './context.js';
import { encodeFrame, FrameReader, type Frame } from './frames.js';
import { handlers } from './handlers.js';

/** The descriptor behind a connected Node socket (Node keeps it on its internal handle). */
function fdOf(socket: Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    throw new KvtierError('KVTIER_NOT_AVAILABLE', 'the socket has no file descriptor');
  }
  return fd;
}

export class Session {
  private readonly state: SessionState;
  private readonly reader = new FrameReader();
  private closed = false;
  private inFlight = 0;

  private constructor(
    private readonly ctx: ChannelContext,
    private readonly socket: Socket,
    pid: number,
    uid: number,
  ) {
    this.state = { pid, uid, name: '', pools: new Map(), leases: new Map() };
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => {}); // 'close' follows and cleans up
    socket.on('close', () => void this.onClose());
  }

  /** Admits a connection whose peer runs as this process's user or as root; refuses others. */
  static accept(ctx: ChannelContext, socket: Socket): Session | undefined {
    let cred: { pid: number; uid: number };
    try {
      cred = native().peerCredentials(fdOf(socket));
    } catch (e) {
      ctx.log('engine-refused', { reason: (e as Error).message });
      ctx.counters.refused++;
      socket.destroy();
      return undefined;
    }
    const me = process.getuid?.() ?? 0;
    if (cred.uid !== me && cred.uid !== 0) {
      ctx.counters.refused++;
      ctx.log('engine-refused', { pid: cred.pid, uid: cred.uid, reason: 'another user' });
      const answer = {
        id: 0,
        ok: false,
        code: 'KVTIER_AUTH',
        message: `the engine runs as uid ${cred.uid}; this server accepts uid ${me} (or root)`,
      };
      socket.end(Buffer.concat(encodeFrame(answer)));
      return undefined;
    }
    ctx.counters.connections++;
    ctx.counters.connected++;
    ctx.log('engine-connected', { pid: cred.pid, uid: cred.uid });
    return new Session(ctx, socket, cred.pid, cred.uid);
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    let frames: Frame[];
    try {
      frames = this.reader.push(chunk);
    } catch (e) {
      this.fatal(e);
      return;
    }
    for (const f of frames) {
      const { op, id } = f.header;
      if (typeof op !== 'string' || typeof id !== 'number' || !Number.isSafeInteger(id) || id < 1) {
        this.fatal(
          new KvtierError(
            'KVTIER_BAD_ARGUMENT',
            'a request needs a string op and a positive integer id',
          ),
        );
        return;
      }
      void this.run(op, id, f);
    }
  }

  private async run(op: string, id: number, f: Frame): Promise<void> {
    this.ctx.counters.requests++;
    this.inFlight++;
    const observe = this.ctx.observe;
    const start = observe ? process.hrtime.bigint() : 0n;
    let failed: string | undefined;
    try {
      const handler = Object.hasOwn(handlers, op) ? handlers[op] : undefined;
      if (!handler) throw new KvtierError('KVTIER_BAD_ARGUMENT', `unknown op '${op}'`);
      const answer = await handler(this.ctx, this.state, f.header, f.payload);
      this.send({ ...answer, id, ok: true });
    } catch (e) {
      this.ctx.counters.errors++;
      const code = isKvtierError(e) ? e.code : 'KVTIER_IO';
      failed = code;
      if (!isKvtierError(e))
        this.ctx.log('engine-error', { pid: this.state.pid, op, error: String(e) });
      this.send({ id, ok: false, code, message: (e as Error).message ?? String(e) });
    } finally {
      this.inFlight--;
      // Unknown ops are named by the client: one label value for all of them keeps the metric's
      // series bounded.
      const known = Object.hasOwn(handlers, op) ? op : 'unknown';
      observe?.(known, Number(process.hrtime.bigint() - start) / 1e9, failed);
    }
  }

  private send(header: Record<string, unknown>): void {
    if (this.closed || this.socket.destroyed) return;
    for (const b of encodeFrame(header)) this.socket.write(b);
  }

  /** A frame that cannot be read: answer with id 0, then close (docs/engine-channel.md). */
  private fatal(e: unknown): void {
    const message = (e as Error).message ?? String(e);
    this.ctx.log('engine-bad-frame', { pid: this.state.pid, error: message });
    this.send({ id: 0, ok: false, code: 'KVTIER_BAD_ARGUMENT', message });
    this.closed = true;
    this.socket.end();
  }

  private async onClose(): Promise<void> {
    this.closed = true;
    this.ctx.counters.connected--;
    const pools = [...this.state.pools.values()];
    this.state.pools.clear();
    for (const lease of this.state.leases.values()) this.ctx.warehouse.unpin(lease);
    this.state.leases.clear();
    this.ctx.log('engine-disconnected', {
      pid: this.state.pid,
      engine: this.state.name,
      pools: pools.map((p) => p.name),
      inFlight: this.inFlight,
    });
    // Unmapped once the operations in flight on them end; the blocks they saved stay.
    await Promise.all(pools.map((p) => this.ctx.registry.remove(p)));
    if (pools.length > 0) {
      this.ctx.log('engine-released', { pid: this.state.pid, pools: pools.map((p) => p.name) });
    }
  }

  /** Ends the connection (server shutdown). */
  close(): void {
    this.socket.destroy();
  }
}
