/**
 * Answering a GET: host-tier blocks go out straight from their slots (pinned meanwhile); the rest
 * are read into a send region first. In the frame (the blocks follow the answer), or, for a GET
 * with REMOTE_READ, lent for the client to read by RDMA until it sends RELEASE.
 */
import { nativeTargetOf } from '../../core/engine.js';
import { native, type NativeTarget } from '../../core/native.js';
import type { Key } from '../../keys/keys.js';
import type { CallOptions } from '../../warehouse/calls.js';
import {
  encodePlacedResults,
  encodeResults,
  ErrorKind,
  frame,
  LEASE_MS,
  MAX_LEASES,
  MsgType,
  type Placement,
  Status,
} from '../protocol.js';
import type { ConnState, SentBlock } from './conn.js';
import { lendOf } from './store.js';
import type { ServerCore } from './core.js';

export class Gets {
  constructor(private readonly core: ServerCore) {}

  /** A GET answered in its frame: the blocks follow GET_RESULT on the connection. */
  async send(
    state: ConnState,
    rid: number,
    keys: Key[],
    localOnly: boolean,
    call: CallOptions,
  ): Promise<void> {
    const { core } = this;
    const bs = core.blockBytes;
    await this.withBlocks(state, keys, localOnly, call, async (blocks) => {
      if (state.phase === 'closed') return;
      const targets: NativeTarget[] = [];
      const index = new Map<unknown, number>();
      const statuses: number[] = [];
      const checksums: number[] = [];
      const spans: number[] = [];
      for (const b of blocks) {
        if (!b) {
          statuses.push(Status.MISSING);
          checksums.push(-1);
          continue;
        }
        let at = index.get(b.target);
        if (at === undefined) {
          at = targets.push(b.target) - 1;
          index.set(b.target, at);
        }
        statuses.push(Status.OK);
        checksums.push(b.checksum);
        spans.push(at, b.offset, bs);
      }
      const head = frame(
        MsgType.GET_RESULT,
        rid,
        encodeResults(statuses, 0, checksums),
        (spans.length / 3) * bs,
      );
      const sent = core.sendHeld(state, head, targets, new Float64Array(spans));
      core.answered(state, rid);
      await sent;
    });
  }

  /**
   * A GET over verbs: answers where each found block lies (registered host-tier slots, or a
   * registered send region for blocks from lower tiers) and keeps those pinned until the client
   * has read them with RDMA READ and sent RELEASE, or the lease times out.
   */
  async lend(
    state: ConnState,
    rid: number,
    keys: Key[],
    localOnly: boolean,
    call: CallOptions,
  ): Promise<void> {
    const { core } = this;
    if (state.leases.has(rid)) {
      core.drop(state, ErrorKind.PROTOCOL, `request id ${rid} already holds a lease`);
      return;
    }
    if (state.leases.size >= MAX_LEASES) {
      core.drop(state, ErrorKind.LIMIT, `more than ${MAX_LEASES} leases for RDMA READ at once`);
      return;
    }
    // The id is claimed now, before anything is awaited: a second GET with it, arriving while
    // the blocks are looked up, finds it taken. RELEASE, the timeout and the connection's close
    // all call `end`; once it has been called, the blocks go as soon as the answer is out.
    let end!: () => void;
    const released = new Promise<void>((resolve) => (end = resolve));
    state.leases.set(rid, end);
    try {
      await this.lent(state, rid, keys, localOnly, call, released);
    } finally {
      if (state.leases.get(rid) === end) state.leases.delete(rid);
    }
  }

  /** lend()'s work once the request id holds its place in `leases`. */
  private async lent(
    state: ConnState,
    rid: number,
    keys: Key[],
    localOnly: boolean,
    call: CallOptions,
    released: Promise<void>,
  ): Promise<void> {
    const { core } = this;
    await this.withBlocks(state, keys, localOnly, call, async (blocks) => {
      if (state.phase === 'closed') return;
      const statuses: number[] = [];
      const checksums: number[] = [];
      const placements: Placement[] = [];
      for (const b of blocks) {
        statuses.push(b ? Status.OK : Status.MISSING);
        checksums.push(b ? b.checksum : -1);
        // Lent for reading: these keys allow RDMA READ only.
        if (b) placements.push(core.placement(b.target, b.offset, 'read'));
      }
      const meta = encodePlacedResults(statuses, placements, checksums);
      if (placements.length === 0) {
        core.reply(state, MsgType.GET_RESULT, rid, meta);
        return;
      }
      let expired!: () => void;
      const timedOut = new Promise<void>((resolve) => (expired = resolve));
      const timer = setTimeout(() => {
        core.log('lease_expired', { conn: state.id, requestId: rid });
        expired();
      }, core.options.leaseTimeoutMs ?? LEASE_MS);
      timer.unref();
      core.reply(state, MsgType.GET_RESULT, rid, meta);
      core.answered(state, rid);
      await Promise.race([released, timedOut]);
      clearTimeout(timer);
    });
  }

  /**
   * The blocks of a GET: host-tier copies are lent (pinned, no copy); the others are read into a
   * send region (from lower tiers, and from the cluster unless `localOnly`: a node fetching for
   * the cluster asks for local blocks only, so no second hop). `use` gets each key's block, or
   * undefined for a miss, with a checksum the client verifies end to end: the stored one, or one
   * computed here for blocks read up (verified on their way up). Everything stays pinned or held
   * until `use` settles.
   */
  private async withBlocks(
    state: ConnState,
    keys: Key[],
    localOnly: boolean,
    call: CallOptions,
    use: (blocks: (SentBlock | undefined)[]) => Promise<void>,
  ): Promise<void> {
    const { core } = this;
    const wh = state.store!;
    const bs = core.blockBytes;
    await lendOf(wh)(
      keys,
      async (lent) => {
        const rest = keys.flatMap((_, i) => (lent[i] ? [] : [i]));
        const region = rest.length > 0 ? core.pool.take(rest.length * bs) : undefined;
        region?.inFlight.begin();
        try {
          const got = region
            ? await wh.get(
                rest.map((i) => keys[i]!),
                region,
                localOnly ? { ...call, remote: false } : call,
              )
            : undefined;
          let j = 0;
          const blocks = keys.map((_, i): SentBlock | undefined => {
            const b = lent[i];
            if (b)
              return { target: nativeTargetOf(b.target), offset: b.offset, checksum: b.checksum };
            const at = j++;
            if (!got!.found[at]) return undefined;
            const bytes = region!.view(at * bs, bs);
            return { target: region!.native, offset: at * bs, checksum: native().crc32c(bytes) };
          });
          await use(blocks);
        } finally {
          if (region) core.release(region);
        }
      },
      call,
    );
  }
}
