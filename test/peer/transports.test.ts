import { describe, expect, it } from 'vitest';

import { connectOptions } from '../../lib/peer/client.js';
import {
  MsgType,
  PLACED_PUT_MIN_BYTES,
  RequestFlag,
  TransportId,
} from '../../lib/peer/protocol.js';
import { TCP, transportOfId, VERBS } from '../../lib/peer/transports.js';

describe('the transport strategy (one object per transport)', () => {
  it('TCP refuses the verbs-only frames and flags; verbs refuses only a second VERBS_CONNECT', () => {
    expect(TCP.refuses(MsgType.VERBS_CONNECT, 0)).toBe('VERBS_CONNECT on a tcp connection');
    expect(TCP.refuses(MsgType.VERBS_READY, 0)).toBe('VERBS_CONNECT on a tcp connection');
    expect(TCP.refuses(MsgType.RELEASE, 0)).toBe('RELEASE on a tcp connection');
    expect(TCP.refuses(MsgType.GET, RequestFlag.REMOTE_READ)).toBe(
      'REMOTE_READ on a tcp connection',
    );
    for (const type of [MsgType.PUT, MsgType.GET, MsgType.LOOKUP, MsgType.DELETE]) {
      expect(TCP.refuses(type, RequestFlag.LOCAL_ONLY)).toBeUndefined();
      expect(VERBS.refuses(type, RequestFlag.REMOTE_READ)).toBeUndefined();
    }
    expect(VERBS.refuses(MsgType.RELEASE, 0)).toBeUndefined();
    expect(VERBS.refuses(MsgType.VERBS_CONNECT, 0)).toBe('VERBS_CONNECT twice');
  });

  it('names the flags and numbers docs/protocol.md gives each transport', () => {
    expect([TCP.id, VERBS.id]).toEqual([TransportId.tcp, TransportId.verbs]);
    expect([TCP.capability, VERBS.capability]).toEqual([1, 2]);
    expect([TCP.getFlag, TCP.putDataFlag]).toEqual([0, 0]);
    expect([VERBS.getFlag, VERBS.putDataFlag]).toEqual([
      RequestFlag.REMOTE_READ,
      RequestFlag.REMOTE_WRITTEN,
    ]);
    expect([TCP.remote, TCP.queuePairs, VERBS.remote, VERBS.queuePairs]).toEqual([
      false,
      false,
      true,
      true,
    ]);
  });

  it('puts in two steps over verbs always, over TCP only large blocks to a server that does not land them', () => {
    expect(VERBS.twoStepPut(4096, true)).toBe(true);
    expect(TCP.twoStepPut(PLACED_PUT_MIN_BYTES, false)).toBe(true);
    expect(TCP.twoStepPut(PLACED_PUT_MIN_BYTES - 1, false)).toBe(false);
    expect(TCP.twoStepPut(PLACED_PUT_MIN_BYTES, true)).toBe(false);
  });

  it('AUTH numbers map to a transport only when this end offers it', () => {
    expect(transportOfId(TransportId.tcp, false)).toBe(TCP);
    expect(transportOfId(TransportId.verbs, true)).toBe(VERBS);
    expect(transportOfId(TransportId.verbs, false)).toBeUndefined();
    expect(transportOfId(7, true)).toBeUndefined();
  });
});

describe('connectOptions', () => {
  it('keeps absent token fields absent and passes the rest', () => {
    const o = connectOptions(
      { tokenFile: '/t', token: undefined },
      { blockBytes: 8, reconnect: false },
    );
    expect(o).toEqual({ tokenFile: '/t', blockBytes: 8, reconnect: false });
    expect('token' in o).toBe(false);
    expect(connectOptions({ token: 'x'.repeat(16) }, {})).toEqual({ token: 'x'.repeat(16) });
  });
});
