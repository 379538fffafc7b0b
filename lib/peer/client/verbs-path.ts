/**
 * How a request's blocks travel over RDMA verbs: the server answers where they lie (a GET) or
 * where they go (an accepted offer), and the client reads or writes them straight between the
 * caller's memory and the server's, one work request per block. One endpoint per client, a queue
 * pair per connection.
 */
import { hostBytes } from '../../core/bytes.js';
import { KvtierError } from '../../core/errors.js';
import { native, type NativeVerbs } from '../../core/native.js';
import type { Key } from '../../keys/keys.js';
import { frame, MsgType, Status } from '../protocol.js';
import type { QueuePairs } from './handshake.js';
import { hold, type Memory } from './memory.js';
import type { Answer, DataPath, Session, Sessions } from './session.js';

export class VerbsPath implements DataPath, QueuePairs {
  /** The RDMA endpoint, made by the first verbs session. */
  private link: NativeVerbs | undefined;

  constructor(private readonly sessions: Sessions) {}

  create(): { id: number; address: Buffer } {
    // A client only initiates: its queue pairs and memory grant the server no access.
    this.link ??= new (native().NativeVerbs)({ role: 'client' });
    return this.link.createQueuePair();
  }

  connect(qp: number, address: Buffer): void {
    this.link!.connectQueuePair(qp, address);
  }

  destroy(qp: number): void {
    this.link?.destroyQueuePair(qp);
  }

  closeSession(s: Session): void {
    if (s.qp !== undefined) this.destroy(s.qp);
  }

  close(): void {
    this.link?.close();
    this.link = undefined;
  }

  /**
   * A get over verbs: the server answers where the blocks lie and lends them; the client reads
   * them straight into the caller's memory, checks each against its checksum, and releases them.
   */
  async get(
    s: Session,
    keys: Key[],
    memory: Memory,
    flags: number,
    call?: Buffer,
  ): Promise<Answer> {
    const sessions = this.sessions;
    const rid = sessions.nextId();
    // The caller's memory stays held from before the request until the reads are done.
    const held = hold(memory, keys.length);
    try {
      const answer = await sessions.request(
        s,
        MsgType.GET,
        keys,
        undefined,
        flags | s.transport.getFlag,
        {
          rid,
          placed: true,
          ...(call ? { call } : {}),
        },
      );
      if (answer.placements!.length === 0) return answer;
      await this.rdma(s, false, keys, memory, answer);
      if (sessions.session === s)
        sessions.net.send(s.conn, frame(MsgType.RELEASE, rid, Buffer.alloc(0)));
      const bs = s.blockBytes;
      const addon = native();
      answer.statuses.forEach((st, i) => {
        if (st !== Status.OK) return;
        const want = answer.checksums![i]!;
        const got = addon.crc32c(hostBytes(memory.targets[i]!, memory.slots[i]! * bs, bs));
        // The server flags every block it lends over verbs; one without a checksum is not
        // reported found, since nothing vouches for its bytes.
        if (want < 0 || got !== want) {
          answer.statuses[i] = Status.FAILED;
          sessions.corruptBlocks++;
        }
      });
      return answer;
    } finally {
      held.release();
    }
  }

  /** Writes the accepted blocks into the places the offer's answer named, then says so. */
  async putData(
    s: Session,
    rid: number,
    keys: Key[],
    memory: Memory,
    accept: Answer,
  ): Promise<{ answer: Promise<Answer> }> {
    await this.rdma(s, true, keys, memory, accept);
    const answer = this.sessions.request(
      s,
      MsgType.PUT_DATA,
      keys,
      undefined,
      s.transport.putDataFlag,
      {
        rid,
        accepted: accept.statuses,
      },
    );
    return { answer };
  }

  /**
   * RDMA between the caller's memory and the places a verbs answer named, one work request per
   * OK entry. A failure replaces the connection (its queue pair is in the error state) and
   * rejects with KVTIER_PEER; it settles only once no byte can still move.
   */
  private async rdma(
    s: Session,
    write: boolean,
    keys: Key[],
    memory: Memory,
    answer: Answer,
  ): Promise<void> {
    const { net, url } = this.sessions;
    const held = hold(memory, keys.length);
    try {
      const bs = s.blockBytes;
      const ops: number[] = [];
      let j = 0;
      answer.statuses.forEach((st, i) => {
        if (st !== Status.OK) return;
        const p = answer.placements![j++]!;
        ops.push(write ? 1 : 0, held.at[i]!, memory.slots[i]! * bs, bs, p.address, p.rkey);
      });
      if (ops.length === 0) return;
      net.ref(); // the process waits on the transfer like on an answer
      try {
        await this.link!.post(s.qp!, new Float64Array(ops), held.targets);
      } catch (e) {
        if (this.sessions.session === s) net.closeConnection(s.conn, (e as Error).message);
        throw new KvtierError('KVTIER_PEER', `${url}: ${(e as Error).message}`, { cause: e });
      } finally {
        net.unref();
      }
    } finally {
      held.release();
    }
  }
}
