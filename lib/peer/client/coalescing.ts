/**
 * Puts and gets asked for in the same turn of the event loop (many callers each moving a block or
 * a few) leave as one request: one frame, one answer, one event on each side instead of one per
 * caller. Each caller gets its own share of the statuses back.
 */
import { regionOf, type Target } from '../../core/engine.js';
import { KvtierError } from '../../core/errors.js';
import type { Key } from '../../keys/keys.js';
import type { Memory } from './memory.js';
import type { Session, Sessions } from './session.js';

/**
 * Puts and gets of at most this many bytes that are asked for in the same turn leave together, up
 * to this many bytes per request. Large enough that the per-request costs (a frame, an event and
 * a JavaScript turn on each side) stop mattering, small enough that callers hardly wait on each
 * other: at 1 MiB blocks, four per request.
 */
export const COALESCE_BYTES = 4 << 20;

export type Batch = { statuses: number[]; word: number };

/** Sends a batch of any size (PeerClient's frames()). */
export type SendBatch = (
  s: Session,
  type: number,
  flags: number,
  keys: Key[],
  memory: Memory | undefined,
  call?: Buffer,
) => Promise<Batch>;

/** A put or get waiting to leave with the others asked for in the same turn. */
interface Waiting {
  session: Session;
  keys: Key[];
  target: Target;
  slots: readonly number[];
  resolve(r: Batch): void;
  reject(e: Error): void;
}

export class Coalescer {
  private readonly queued = new Map<string, Waiting[]>();

  constructor(
    private readonly sessions: Sessions,
    private readonly sendBatch: SendBatch,
  ) {}

  /** Whether a request of these many keys is small enough to wait for company. */
  fits(s: Session, keys: number): boolean {
    return keys > 0 && keys * s.blockBytes <= COALESCE_BYTES;
  }

  add(
    s: Session,
    type: number,
    flags: number,
    keys: Key[],
    target: Target,
    slots: readonly number[],
    call?: Buffer,
  ): Promise<Batch> {
    // The caller's memory stays in use from now until its answer, as if it had left at once.
    const region = regionOf(target);
    region?.assertOpen();
    region?.inFlight.begin();
    const end = (): void => region?.inFlight.end();
    return new Promise((resolve, reject) => {
      // Only calls with the same call section (or none) share a request: it is the request's.
      const name = `${type}:${flags}:${call?.toString('hex') ?? ''}`;
      let queue = this.queued.get(name);
      if (!queue) {
        queue = [];
        this.queued.set(name, queue);
        setImmediate(() => this.flush(name, type, flags, call));
      }
      queue.push({
        session: s,
        keys,
        target,
        slots,
        resolve: (r) => {
          end();
          resolve(r);
        },
        reject: (e) => {
          end();
          reject(e);
        },
      });
    });
  }

  private flush(name: string, type: number, flags: number, call: Buffer | undefined): void {
    const queue = this.queued.get(name) ?? [];
    this.queued.delete(name);
    let s: Session;
    try {
      s = this.sessions.ready();
    } catch (e) {
      for (const w of queue) w.reject(e as Error);
      return;
    }
    // A caller checked its sizes against the session it saw; a new session may differ.
    const live = queue.filter((w) => {
      if (w.session === s) return true;
      w.reject(
        new KvtierError('KVTIER_PEER', `the connection to ${this.sessions.url} was replaced`),
      );
      return false;
    });
    // Requests of up to COALESCE_BYTES together: callers wait on each other only that much.
    let group: Waiting[] = [];
    let bytes = 0;
    for (const w of live) {
      const b = w.keys.length * s.blockBytes;
      if (group.length > 0 && bytes + b > COALESCE_BYTES) {
        this.send(s, type, flags, group, call);
        group = [];
        bytes = 0;
      }
      group.push(w);
      bytes += b;
    }
    if (group.length > 0) this.send(s, type, flags, group, call);
  }

  /** One request for the keys of several callers; each gets its own statuses back. */
  private send(
    s: Session,
    type: number,
    flags: number,
    live: Waiting[],
    call: Buffer | undefined,
  ): void {
    const keys: Key[] = [];
    const targets: Target[] = [];
    const slots: number[] = [];
    for (const w of live) {
      for (let i = 0; i < w.keys.length; i++) {
        keys.push(w.keys[i]!);
        targets.push(w.target);
        slots.push(w.slots[i]!);
      }
    }
    let done: Promise<Batch>;
    try {
      done = this.sendBatch(s, type, flags, keys, { targets, slots }, call);
    } catch (e) {
      for (const w of live) w.reject(e as Error);
      return;
    }
    done.then(
      ({ statuses }) => {
        let from = 0;
        for (const w of live) {
          w.resolve({ statuses: statuses.slice(from, from + w.keys.length), word: 0 });
          from += w.keys.length;
        }
      },
      (e: unknown) => {
        for (const w of live) w.reject(e as Error);
      },
    );
  }
}
