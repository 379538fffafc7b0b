/**
 * The call section (docs/protocol.md, "Calls"): a request's session, hint and request id, carried
 * after its key batch when the header has RequestFlag.CALL, so the server's policy hears what the
 * engine knows (docs/policies.md, "Hints through the API"). Only sent to servers announcing
 * Capability.CALLS: an older server would read the longer metadata as a malformed batch.
 */
import { HINTS, type CallId, type CallOptions } from '../warehouse/calls.js';
import { BATCH_FIXED_BYTES, decodeKeys, KEY_ENTRY_BYTES, protocolError } from './protocol.js';
import type { Key } from '../keys/keys.js';

/** The layout version this server reads and this client writes. */
export const CALL_VERSION = 1;
export const CALL_HEAD_BYTES = 8;
/** A string id is 1 to 256 UTF-16 code units, so at most 768 bytes of UTF-8. */
const MAX_ID_CHARS = 256;
const MAX_ID_BYTES = 3 * MAX_ID_CHARS;
/** The most bytes a call section takes; a server announcing CALLS allows this much more metadata. */
export const MAX_CALL_BYTES = CALL_HEAD_BYTES + 2 * MAX_ID_BYTES;

const ID_ABSENT = 0;
const ID_STRING = 1;
const ID_INTEGER = 2;
const INTEGER_BYTES = 8;

/** Hint codes on the wire: 0 is none; then HINTS in order ('soon' 1, 'closed' 2). */
const hintCode = (h: CallOptions['hint']): number => (h === undefined ? 0 : HINTS.indexOf(h) + 1);

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function encodeId(id: CallId | undefined): { kind: number; bytes: Buffer } {
  if (id === undefined) return { kind: ID_ABSENT, bytes: Buffer.alloc(0) };
  if (typeof id === 'number') {
    const bytes = Buffer.alloc(INTEGER_BYTES);
    bytes.writeBigInt64LE(BigInt(id));
    return { kind: ID_INTEGER, bytes };
  }
  return { kind: ID_STRING, bytes: Buffer.from(id, 'utf8') };
}

/** The section for already checked call options (checkCallOptions, and well-formed strings). */
export function encodeCall(o: CallOptions): Buffer {
  const session = encodeId(o.session);
  const request = encodeId(o.request);
  const head = Buffer.alloc(CALL_HEAD_BYTES);
  head.writeUInt8(CALL_VERSION, 0);
  head.writeUInt8(hintCode(o.hint), 1);
  head.writeUInt8(session.kind, 2);
  head.writeUInt8(request.kind, 3);
  head.writeUInt16LE(session.bytes.length, 4);
  head.writeUInt16LE(request.bytes.length, 6);
  return Buffer.concat([head, session.bytes, request.bytes]);
}

function decodeId(kind: number, bytes: Buffer, field: string): CallId | undefined {
  if (kind === ID_ABSENT) {
    if (bytes.length !== 0) throw protocolError(`an absent ${field} with ${bytes.length} bytes`);
    return undefined;
  }
  if (kind === ID_INTEGER) {
    const v = bytes.length === INTEGER_BYTES ? bytes.readBigInt64LE(0) : undefined;
    const n = Number(v);
    if (v === undefined || !Number.isSafeInteger(n)) {
      throw protocolError(`the ${field} is not an 8-byte safe integer`);
    }
    return n;
  }
  if (kind === ID_STRING) {
    let s: string;
    try {
      s = utf8.decode(bytes);
    } catch {
      throw protocolError(`the ${field} is not UTF-8`);
    }
    if (s.length < 1 || s.length > MAX_ID_CHARS) {
      throw protocolError(`the ${field} is not 1 to ${MAX_ID_CHARS} characters`);
    }
    return s;
  }
  throw protocolError(`unknown ${field} kind ${kind}`);
}

/** A call section's options; throws KVTIER_PROTOCOL for anything malformed. */
export function decodeCall(section: Buffer): CallOptions {
  if (section.length < CALL_HEAD_BYTES) throw protocolError('a call section shorter than 8 bytes');
  const version = section.readUInt8(0);
  if (version !== CALL_VERSION) throw protocolError(`call section version ${version}, not 1`);
  const hint = section.readUInt8(1);
  if (hint > HINTS.length) throw protocolError(`unknown hint ${hint}`);
  const sessionBytes = section.readUInt16LE(4);
  const requestBytes = section.readUInt16LE(6);
  if (section.length !== CALL_HEAD_BYTES + sessionBytes + requestBytes) {
    throw protocolError(
      `a call section of ${section.length} bytes does not hold ${sessionBytes} + ${requestBytes}`,
    );
  }
  const at = CALL_HEAD_BYTES + sessionBytes;
  const session = decodeId(section.readUInt8(2), section.subarray(CALL_HEAD_BYTES, at), 'session');
  const request = decodeId(section.readUInt8(3), section.subarray(at), 'request');
  return {
    ...(session !== undefined ? { session } : {}),
    ...(hint > 0 ? { hint: HINTS[hint - 1]! } : {}),
    ...(request !== undefined ? { request } : {}),
  };
}

/**
 * The keys of a request's metadata, and its call when `hasCall` (RequestFlag.CALL): the key batch
 * then the section. Throws KVTIER_PROTOCOL, as decodeKeys does.
 */
export function decodeKeysAndCall(
  meta: Buffer,
  maxBatch: number,
  hasCall: boolean,
): { keys: Key[]; call?: CallOptions } {
  if (!hasCall) return { keys: decodeKeys(meta, maxBatch) };
  if (meta.length < BATCH_FIXED_BYTES) throw protocolError('batch metadata shorter than 8 bytes');
  const count = meta.readUInt32LE(0);
  // Past maxBatch, decodeKeys reports the limit; otherwise the batch must leave room for a call.
  const end = count > maxBatch ? meta.length : BATCH_FIXED_BYTES + count * KEY_ENTRY_BYTES;
  if (end > meta.length) {
    throw protocolError(`batch metadata of ${meta.length} bytes does not hold ${count} keys`);
  }
  const keys = decodeKeys(meta.subarray(0, end), maxBatch);
  return { keys, call: decodeCall(meta.subarray(end)) };
}
