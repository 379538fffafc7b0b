/**
 * How a request's blocks travel over TCP (the blocks ride in the frames), and the two-step put
 * both transports share: an offer, which the server answers with the blocks it wants, then the
 * data (in a PUT_DATA frame over TCP; by RDMA WRITE over verbs, verbs-path.ts).
 */
import type { Key } from '../../keys/keys.js';
import { MAX_OFFERS, MsgType } from '../protocol.js';
import type { Memory } from './memory.js';
import type { Answer, DataPath, Session, Sessions } from './session.js';

/** TCP: a GET's blocks arrive in its answer, a put's in its PUT_DATA frame. */
export class TcpPath implements DataPath {
  constructor(private readonly sessions: Sessions) {}

  get(s: Session, keys: Key[], memory: Memory, flags: number, call?: Buffer): Promise<Answer> {
    return this.sessions.request(s, MsgType.GET, keys, memory, flags, call ? { call } : undefined);
  }

  putData(
    s: Session,
    rid: number,
    keys: Key[],
    memory: Memory,
    accept: Answer,
  ): Promise<{ answer: Promise<Answer> }> {
    const answer = this.sessions.request(
      s,
      MsgType.PUT_DATA,
      keys,
      memory,
      s.transport.putDataFlag,
      {
        rid,
        accepted: accept.statuses,
      },
    );
    return Promise.resolve({ answer });
  }

  closeSession(): void {}
}

/**
 * Two-step puts. The server refuses offers beyond MAX_OFFERS waiting for their data: at most that
 * many are out between an offer and its PUT_DATA, which the server reads before any later offer.
 */
export class TwoStepPuts {
  private offers = 0;
  private readonly waiters: (() => void)[] = [];

  constructor(private readonly sessions: Sessions) {}

  /**
   * A put in two steps for large blocks, and for every put over verbs: the server reserves slots
   * and answers which blocks it wants, then those are placed straight into the slots (no copy on
   * its side).
   */
  async put(
    s: Session,
    keys: Key[],
    memory: Memory,
    flags: number,
    call?: Buffer,
  ): Promise<{ statuses: number[]; word: number }> {
    const rid = this.sessions.nextId();
    await this.slot();
    let data: { answer: Promise<Answer> };
    try {
      const accept = await this.sessions.request(s, MsgType.PUT_OFFER, keys, undefined, flags, {
        rid,
        placed: s.transport.remote,
        ...(call ? { call } : {}),
      });
      data = await s.path.putData(s, rid, keys, memory, accept);
    } finally {
      this.done();
    }
    return data.answer;
  }

  private async slot(): Promise<void> {
    while (this.offers >= MAX_OFFERS) await new Promise<void>((r) => this.waiters.push(r));
    this.offers++;
  }

  private done(): void {
    this.offers--;
    this.waiters.shift()?.();
  }
}
