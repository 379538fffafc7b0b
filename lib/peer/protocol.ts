/**
 * The peer wire protocol, version 1: frame layout, message types, limits and the codecs for
 * metadata sections. docs/protocol.md describes the same bytes for implementers in other
 * languages; change both together.
 */
import { KvtierError } from '../core/errors.js';
import { KEY_BYTES, type Key } from '../keys/keys.js';

export const PROTOCOL_VERSION = 1;
export const FRAME_MAGIC = 0x5054564b; // the bytes "KVTP"
export const HEADER_BYTES = 24;

export const MsgType = {
  HELLO: 0x01,
  CHALLENGE: 0x02,
  AUTH: 0x03,
  READY: 0x04,
  ERROR: 0x05,
  PUT: 0x10,
  PUT_RESULT: 0x11,
  GET: 0x12,
  GET_RESULT: 0x13,
  LOOKUP: 0x14,
  LOOKUP_RESULT: 0x15,
  DELETE: 0x16,
  DELETE_RESULT: 0x17,
  PUT_OFFER: 0x18,
  PUT_ACCEPT: 0x19,
  PUT_DATA: 0x1a,
  VERBS_CONNECT: 0x20,
  VERBS_READY: 0x21,
  RELEASE: 0x22,
  /** Operator only, on a server with tenants: the statistics of every tenant (docs/tenants.md). */
  STATS: 0x23,
  STATS_RESULT: 0x24,
} as const;

/**
 * Blocks at least this large are put in two steps (offer, then data placed in the slots). Below
 * it the extra round trip and reservation cost more than the copy they save (measured at 1 MiB:
 * equal server CPU per GB either way).
 */
export const PLACED_PUT_MIN_BYTES = 1 << 20;
/** Offers a connection may have waiting for their data. */
export const MAX_OFFERS = 64;
/** A queue pair's address in VERBS_CONNECT and VERBS_READY: lid, flags, qpn, psn, gid. */
export const VERBS_ADDRESS_BYTES = 28;
/** One placement (remote address u64, rkey u32, reserved u32) per OK entry of a verbs answer. */
export const PLACEMENT_BYTES = 16;
/** Leases for RDMA READ (GETs with REMOTE_READ not yet released) a connection may hold. */
export const MAX_LEASES = 64;
/** Blocks lent for RDMA READ stay pinned until RELEASE, or this long. */
export const LEASE_MS = 30_000;

/** Per-descriptor status in a result's entries. */
export const Status = { OK: 0, MISSING: 1, REJECTED: 2, FAILED: 3, PRESENT: 4 } as const;

/** Codes of ERROR frames. */
export const ErrorKind = {
  PROTOCOL: 1,
  AUTH: 2,
  VERSION: 3,
  LIMIT: 4,
  BLOCK_SIZE: 5,
  INTERNAL: 6,
  SHUTTING_DOWN: 7,
  TRANSPORT: 8,
} as const;

/**
 * Bits of a request's header `flags`. LOCAL_ONLY on a GET: answer from this node's own tiers and
 * do not fetch from the cluster (set by a node that is itself fetching for the cluster, so that
 * stale index entries can never send two nodes asking each other in a loop). Receivers that do
 * not know a bit ignore it.
 */
export const RequestFlag = {
  LOCAL_ONLY: 0x01,
  REMOTE_READ: 0x02,
  REMOTE_WRITTEN: 0x04,
  /**
   * On a PUT or PUT_OFFER: answer PUT_RESULT only once each block answered OK or PRESENT is in
   * the server's file tier with its header written and synced (docs/protocol.md, "Durable puts").
   */
  DURABLE: 0x08,
  /**
   * On a PUT, PUT_OFFER, GET or LOOKUP: a call section (session, hint, request id) follows the key
   * batch in the metadata (call-codec.ts; docs/protocol.md, "Calls"). Only to servers announcing
   * Capability.CALLS.
   */
  CALL: 0x10,
} as const;

/** Capability bits of HELLO and CHALLENGE. */
/** CALLS (server only): the server reads call sections (RequestFlag.CALL). */
/** LANDS (server only): one-step PUT blocks land straight in the store, so offers gain nothing. */
/** DURABLE (server only): the server honours RequestFlag.DURABLE (it has a file tier). */
/**
 * TENANTS (server only): the server serves tenants; AUTH names one (its token signs the proof),
 * or names none and signs with the operator's token (docs/protocol.md, Tenants).
 */
export const Capability = {
  TCP: 1,
  VERBS: 2,
  LANDS: 4,
  DURABLE: 8,
  TENANTS: 16,
  CALLS: 32,
} as const;
/** Most bytes of a STATS_RESULT's metadata (the statistics of every tenant, as JSON). */
export const MAX_STATS_BYTES = 1 << 20;
export const TransportId = { tcp: 0, verbs: 1 } as const;

export const NONCE_BYTES = 32;
export const MAC_BYTES = 32;
export const KEY_ENTRY_BYTES = 40;
export const RESULT_ENTRY_BYTES = 8;
export const BATCH_FIXED_BYTES = 8;
export const HELLO_BYTES = 48;
export const CHALLENGE_BYTES = 64;
export const AUTH_BYTES = 40;
export const READY_BYTES = 40;
/** Handshake frames are tiny; before authentication nothing larger is read. */
export const HANDSHAKE_META_LIMIT = 4096;
export const MAX_BATCH = 1024;
/** Bound on the payload of one frame, whatever the block size. */
export const MAX_PAYLOAD = 256 << 20;

export function maxBatchFor(blockBytes: number): number {
  return Math.max(1, Math.min(MAX_BATCH, Math.floor(MAX_PAYLOAD / blockBytes)));
}

export function maxMetaFor(maxBatch: number): number {
  return BATCH_FIXED_BYTES + maxBatch * KEY_ENTRY_BYTES;
}

/** A frame's header and metadata in one buffer, ready for the transport. */
export function frame(
  type: number,
  requestId: number,
  meta: Uint8Array,
  payloadBytes = 0,
  flags = 0,
): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + meta.length);
  out.writeUInt32LE(FRAME_MAGIC, 0);
  out.writeUInt8(type, 4);
  out.writeUInt8(flags, 5);
  out.writeUInt16LE(0, 6);
  out.writeUInt32LE(requestId >>> 0, 8);
  out.writeUInt32LE(meta.length, 12);
  out.writeBigUInt64LE(BigInt(payloadBytes), 16);
  out.set(meta, HEADER_BYTES);
  return out;
}

export function protocolError(message: string): KvtierError {
  return new KvtierError('KVTIER_PROTOCOL', message);
}

/** Keys as a batch request's metadata: count, reserved, then one 40-byte entry per key. */
export function encodeKeys(keys: readonly Key[]): Buffer {
  const out = Buffer.alloc(BATCH_FIXED_BYTES + keys.length * KEY_ENTRY_BYTES);
  out.writeUInt32LE(keys.length, 0);
  keys.forEach((k, i) => {
    const at = BATCH_FIXED_BYTES + i * KEY_ENTRY_BYTES;
    const n = out.write(k, at + 8, KEY_BYTES, 'hex');
    out.writeUInt8(n, at);
  });
  return out;
}

/** The keys of a batch request, every length checked; throws KVTIER_PROTOCOL. */
export function decodeKeys(meta: Buffer, maxBatch: number): Key[] {
  if (meta.length < BATCH_FIXED_BYTES) throw protocolError('batch metadata shorter than 8 bytes');
  const count = meta.readUInt32LE(0);
  if (count > maxBatch) {
    throw protocolError(`a batch of ${count} descriptors exceeds the limit of ${maxBatch}`);
  }
  if (meta.length !== BATCH_FIXED_BYTES + count * KEY_ENTRY_BYTES) {
    throw protocolError(`batch metadata of ${meta.length} bytes does not hold ${count} keys`);
  }
  const keys: Key[] = [];
  for (let i = 0; i < count; i++) {
    const at = BATCH_FIXED_BYTES + i * KEY_ENTRY_BYTES;
    const len = meta.readUInt8(at);
    if (len < 16 || len > KEY_BYTES) {
      throw protocolError(`key ${i} has length ${len}; keys are 16 to 32 bytes`);
    }
    keys.push(meta.toString('hex', at + 8, at + 8 + len));
  }
  return keys;
}

/** A result's metadata: count, a word (the prefix for LOOKUP_RESULT), 8-byte entries. */
export function encodeResults(
  statuses: readonly number[],
  word = 0,
  checksums?: readonly number[],
): Buffer {
  const out = Buffer.alloc(BATCH_FIXED_BYTES + statuses.length * RESULT_ENTRY_BYTES);
  out.writeUInt32LE(statuses.length, 0);
  out.writeUInt32LE(word >>> 0, 4);
  statuses.forEach((s, i) => {
    const at = BATCH_FIXED_BYTES + i * RESULT_ENTRY_BYTES;
    out.writeUInt8(s, at);
    // A checksum of -1 (or none) leaves the entry's checksum flag clear.
    const crc = checksums?.[i] ?? -1;
    if (crc >= 0) {
      out.writeUInt8(ENTRY_HAS_CHECKSUM, at + 1);
      out.writeUInt32LE(crc >>> 0, at + 4);
    }
  });
  return out;
}

/** Entry flag: bytes 4..7 hold the block's CRC-32C (Castagnoli). */
export const ENTRY_HAS_CHECKSUM = 1;

export function decodeResults(
  meta: Buffer,
  expected: number,
): { statuses: number[]; word: number; checksums: number[] } {
  if (meta.length < BATCH_FIXED_BYTES) throw protocolError('result metadata shorter than 8 bytes');
  const count = meta.readUInt32LE(0);
  if (count !== expected || meta.length !== BATCH_FIXED_BYTES + count * RESULT_ENTRY_BYTES) {
    throw protocolError(`a result for ${count} descriptors answers a request of ${expected}`);
  }
  const statuses: number[] = [];
  const checksums: number[] = [];
  for (let i = 0; i < count; i++) {
    const at = BATCH_FIXED_BYTES + i * RESULT_ENTRY_BYTES;
    statuses.push(meta.readUInt8(at));
    const flagged = (meta.readUInt8(at + 1) & ENTRY_HAS_CHECKSUM) !== 0;
    checksums.push(flagged ? meta.readUInt32LE(at + 4) : -1);
  }
  return { statuses, word: meta.readUInt32LE(4), checksums };
}

/** Where the peer may read or write one block over RDMA. */
export interface Placement {
  address: number;
  rkey: number;
}

/** A verbs answer's metadata: the result batch, then one placement per OK entry, in order. */
export function encodePlacedResults(
  statuses: readonly number[],
  placements: readonly Placement[],
  checksums?: readonly number[],
): Buffer {
  const head = encodeResults(statuses, 0, checksums);
  const out = Buffer.alloc(head.length + placements.length * PLACEMENT_BYTES);
  head.copy(out, 0);
  placements.forEach((p, i) => {
    const at = head.length + i * PLACEMENT_BYTES;
    out.writeBigUInt64LE(BigInt(p.address), at);
    out.writeUInt32LE(p.rkey >>> 0, at + 8);
  });
  return out;
}

export function decodePlacedResults(
  meta: Buffer,
  expected: number,
): { statuses: number[]; word: number; checksums: number[]; placements: Placement[] } {
  const head = BATCH_FIXED_BYTES + expected * RESULT_ENTRY_BYTES;
  if (meta.length < head) throw protocolError('result metadata shorter than its entries');
  const r = decodeResults(meta.subarray(0, head), expected);
  const ok = r.statuses.filter((x) => x === Status.OK).length;
  if (meta.length !== head + ok * PLACEMENT_BYTES) {
    throw protocolError(
      `a verbs answer with ${ok} blocks carries ${meta.length - head} bytes of placements`,
    );
  }
  const placements: Placement[] = [];
  for (let i = 0; i < ok; i++) {
    const at = head + i * PLACEMENT_BYTES;
    const address = meta.readBigUInt64LE(at);
    if (address > BigInt(Number.MAX_SAFE_INTEGER))
      throw protocolError('a placement address beyond 2^53');
    placements.push({ address: Number(address), rkey: meta.readUInt32LE(at + 8) });
  }
  return { ...r, placements };
}

export function encodeError(kind: number, message: string): Buffer {
  const text = Buffer.from(message.slice(0, 1000), 'utf8');
  const out = Buffer.alloc(8 + text.length);
  out.writeUInt32LE(kind, 0);
  out.writeUInt32LE(text.length, 4);
  text.copy(out, 8);
  return out;
}

export function decodeError(meta: Buffer): { kind: number; message: string } {
  if (meta.length < 8) return { kind: ErrorKind.PROTOCOL, message: 'malformed error frame' };
  const len = Math.min(meta.readUInt32LE(4), meta.length - 8);
  return { kind: meta.readUInt32LE(0), message: meta.toString('utf8', 8, 8 + len) };
}

/** The kvtier error code a peer's ERROR frame maps to. */
export function errorCodeFor(kind: number): 'KVTIER_AUTH' | 'KVTIER_PROTOCOL' | 'KVTIER_PEER' {
  if (kind === ErrorKind.AUTH) return 'KVTIER_AUTH';
  if (
    kind === ErrorKind.PROTOCOL ||
    kind === ErrorKind.VERSION ||
    kind === ErrorKind.LIMIT ||
    kind === ErrorKind.BLOCK_SIZE
  ) {
    return 'KVTIER_PROTOCOL';
  }
  return 'KVTIER_PEER';
}

/** "kvtier://host:port", "host:port" or "[v6]:port" into its parts. */
export function parseAddress(url: string): { host: string; port: number } {
  const rest = url.startsWith('kvtier://') ? url.slice('kvtier://'.length) : url;
  const m = /^(?:\[([^\]]+)\]|([^:/]+)):(\d{1,5})\/?$/.exec(rest);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `not a peer address: ${url} (expected kvtier://HOST:PORT or HOST:PORT)`,
    );
  }
  return { host: m[1] ?? m[2]!, port };
}
