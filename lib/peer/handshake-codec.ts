/**
 * Codecs of the handshake's messages (HELLO, CHALLENGE, AUTH, READY, and the queue pair address
 * of VERBS_CONNECT and VERBS_READY), byte for byte as docs/protocol.md lays them out. Like the
 * batch codecs in protocol.ts, a decoder checks the length before it reads a field and throws
 * KVTIER_PROTOCOL; what a value means (a version or block size this end refuses) is the caller's.
 */
import { TENANT_NAME_MAX } from './auth.js';
import {
  AUTH_BYTES,
  CHALLENGE_BYTES,
  HELLO_BYTES,
  MAC_BYTES,
  NONCE_BYTES,
  protocolError,
  READY_BYTES,
  VERBS_ADDRESS_BYTES,
} from './protocol.js';

export interface Hello {
  version: number;
  capabilities: number;
  /** The block size the client expects, or 0 to take the server's. */
  blockBytes: number;
  clientNonce: Buffer;
}

export interface Challenge {
  version: number;
  capabilities: number;
  blockBytes: number;
  maxBatch: number;
  maxMeta: number;
  maxPayload: number;
  serverNonce: Buffer;
}

/** AUTH (the client's proof) and READY (the server's) share one layout. */
export interface Proof {
  proof: Buffer;
  /** TransportId. */
  transport: number;
}

/** AUTH may name a tenant (only to a server whose CHALLENGE has Capability.TENANTS). */
export interface Auth extends Proof {
  /** The tenant's name, ASCII; undefined: none named (the operator, or a server without tenants). */
  tenant?: string;
}

function exactly(meta: Uint8Array, bytes: number, name: string): Buffer {
  if (meta.length !== bytes) {
    throw protocolError(`${name} metadata is ${meta.length} bytes, not ${bytes}`);
  }
  return Buffer.isBuffer(meta) ? meta : Buffer.from(meta.buffer, meta.byteOffset, meta.length);
}

function fixed(field: Buffer, bytes: number, name: string): Buffer {
  if (field.length !== bytes) throw protocolError(`${name} is ${field.length} bytes, not ${bytes}`);
  return field;
}

/**
 * A u64 field as a number. Not refused beyond 2^53: the caller compares it with a size of its
 * own (a block size, a limit), and no size of this side's is that large.
 */
function u64(meta: Buffer, at: number): number {
  return Number(meta.readBigUInt64LE(at));
}

export function encodeHello(h: Hello): Buffer {
  const out = Buffer.alloc(HELLO_BYTES);
  out.writeUInt16LE(h.version, 0);
  out.writeUInt32LE(h.capabilities >>> 0, 4);
  out.writeBigUInt64LE(BigInt(h.blockBytes), 8);
  fixed(h.clientNonce, NONCE_BYTES, 'the client nonce').copy(out, 16);
  return out;
}

export function decodeHello(meta: Uint8Array): Hello {
  const m = exactly(meta, HELLO_BYTES, 'HELLO');
  return {
    version: m.readUInt16LE(0),
    capabilities: m.readUInt32LE(4),
    blockBytes: u64(m, 8),
    clientNonce: Buffer.from(m.subarray(16, 16 + NONCE_BYTES)),
  };
}

export function encodeChallenge(c: Challenge): Buffer {
  const out = Buffer.alloc(CHALLENGE_BYTES);
  out.writeUInt16LE(c.version, 0);
  out.writeUInt32LE(c.capabilities >>> 0, 4);
  out.writeBigUInt64LE(BigInt(c.blockBytes), 8);
  out.writeUInt32LE(c.maxBatch >>> 0, 16);
  out.writeUInt32LE(c.maxMeta >>> 0, 20);
  out.writeBigUInt64LE(BigInt(c.maxPayload), 24);
  fixed(c.serverNonce, NONCE_BYTES, 'the server nonce').copy(out, 32);
  return out;
}

export function decodeChallenge(meta: Uint8Array): Challenge {
  const m = exactly(meta, CHALLENGE_BYTES, 'CHALLENGE');
  return {
    version: m.readUInt16LE(0),
    capabilities: m.readUInt32LE(4),
    blockBytes: u64(m, 8),
    maxBatch: m.readUInt32LE(16),
    maxMeta: m.readUInt32LE(20),
    maxPayload: u64(m, 24),
    serverNonce: Buffer.from(m.subarray(32, 32 + NONCE_BYTES)),
  };
}

function encodeProof(p: Proof, bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  fixed(p.proof, MAC_BYTES, 'a proof').copy(out, 0);
  out.writeUInt32LE(p.transport >>> 0, MAC_BYTES);
  return out;
}

function decodeProof(meta: Uint8Array, bytes: number, name: string): Proof {
  const m = exactly(meta, bytes, name);
  // A view, not a copy: the proof is compared at once and not kept.
  return { proof: m.subarray(0, MAC_BYTES), transport: m.readUInt32LE(MAC_BYTES) };
}

/**
 * AUTH: 40 bytes, or 40 plus a tenant's name, whose length is the byte at offset 36 (0: no
 * tenant, and then the frame is exactly the 40 bytes of a client without tenants).
 */
export function encodeAuth(a: Auth): Buffer {
  const name = a.tenant === undefined ? Buffer.alloc(0) : Buffer.from(a.tenant, 'latin1');
  if (name.length > TENANT_NAME_MAX || (a.tenant !== undefined && name.length === 0)) {
    throw protocolError(`a tenant's name is 1 to ${TENANT_NAME_MAX} bytes, not ${name.length}`);
  }
  const out = Buffer.alloc(AUTH_BYTES + name.length);
  encodeProof(a, AUTH_BYTES).copy(out, 0);
  out.writeUInt8(name.length, 36);
  name.copy(out, AUTH_BYTES);
  return out;
}

export function decodeAuth(meta: Uint8Array): Auth {
  const n = meta.length >= AUTH_BYTES ? (meta[36] ?? 0) : 0;
  if (n > TENANT_NAME_MAX) throw protocolError(`AUTH names a tenant of ${n} bytes`);
  const m = exactly(meta, AUTH_BYTES + n, 'AUTH');
  const auth: Auth = { proof: m.subarray(0, MAC_BYTES), transport: m.readUInt32LE(MAC_BYTES) };
  if (n > 0) auth.tenant = m.toString('latin1', AUTH_BYTES, AUTH_BYTES + n);
  return auth;
}
export const encodeReady = (p: Proof): Buffer => encodeProof(p, READY_BYTES);
export const decodeReady = (meta: Uint8Array): Proof => decodeProof(meta, READY_BYTES, 'READY');

/**
 * A queue pair's address (VERBS_CONNECT, VERBS_READY). Its fields are the native endpoint's to
 * write and read (lid, flags, qpn, psn, gid); here only its size is checked, both ways.
 */
export function encodeVerbsAddress(address: Uint8Array): Buffer {
  return exactly(address, VERBS_ADDRESS_BYTES, 'a queue pair address');
}

export function decodeVerbsAddress(meta: Uint8Array): Buffer {
  return exactly(meta, VERBS_ADDRESS_BYTES, 'a queue pair address');
}
