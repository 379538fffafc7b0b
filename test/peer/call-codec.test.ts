/**
 * The call section's codec (lib/peer/call-codec.ts, docs/protocol.md "Calls"): what the client
 * encodes decodes to the same ids and hint, string ids and integer ids stay apart, a section sits
 * after exactly `count` key entries, and the largest section fits the room the server announces.
 */
import { describe, expect, it } from 'vitest';

import {
  decodeCall,
  decodeKeysAndCall,
  encodeCall,
  MAX_CALL_BYTES,
} from '../../lib/peer/call-codec.js';
import { encodeKeys, maxMetaFor } from '../../lib/peer/protocol.js';
import { isKvtierError } from '../../lib/index.js';

const code = (f: () => unknown): string => {
  try {
    f();
    return 'returned';
  } catch (e) {
    return isKvtierError(e) ? e.code : String(e);
  }
};

describe('call sections', () => {
  it('round-trip every kind of id and hint', () => {
    const cases = [
      {},
      { hint: 'soon' as const },
      { session: 'chat-42', hint: 'closed' as const },
      { session: 1, request: '1' },
      { session: -(2 ** 53 - 1), request: 2 ** 53 - 1 },
      { session: '\u{1F600}'.repeat(128), request: 'é'.repeat(256) },
    ];
    for (const c of cases) expect(decodeCall(encodeCall(c))).toEqual(c);
    // The integer 1 and the string "1" are different ids on the wire too.
    expect(encodeCall({ session: 1 }).equals(encodeCall({ session: '1' }))).toBe(false);
  });

  it('the largest section fits beside a full batch in the room CALLS announces', () => {
    const largest = encodeCall({ session: '\uffff'.repeat(256), request: '\uffff'.repeat(256) });
    expect(largest.length).toBe(MAX_CALL_BYTES);
    const keys = Array.from({ length: 4 }, (_, i) => String(i).repeat(64));
    const meta = Buffer.concat([encodeKeys(keys), largest]);
    expect(meta.length).toBeLessThanOrEqual(maxMetaFor(4) + MAX_CALL_BYTES);
    const got = decodeKeysAndCall(meta, 4, true);
    expect(got.keys).toEqual(keys);
    expect(got.call?.session).toBe('\uffff'.repeat(256));
  });

  it('a batch without the flag must be exactly its keys; with it, keys then a section', () => {
    const keys = ['ab'.repeat(32)];
    const section = encodeCall({ hint: 'closed' });
    const both = Buffer.concat([encodeKeys(keys), section]);
    expect(code(() => decodeKeysAndCall(both, 8, false))).toBe('KVTIER_PROTOCOL');
    expect(decodeKeysAndCall(both, 8, true)).toEqual({ keys, call: { hint: 'closed' } });
    // A count claiming more keys than the metadata holds is malformed, not read past the end.
    const lying = Buffer.from(both);
    lying.writeUInt32LE(3, 0);
    expect(code(() => decodeKeysAndCall(lying, 8, true))).toBe('KVTIER_PROTOCOL');
    // Past maxBatch: the batch limit, as without a section.
    expect(code(() => decodeKeysAndCall(both, 0, true))).toBe('KVTIER_PROTOCOL');
  });
});
