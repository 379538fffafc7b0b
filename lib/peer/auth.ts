/**
 * Authentication by HMAC-SHA256 challenge-response over a shared secret. Each side proves it knows
 * the secret by keying an HMAC over both sides' fresh nonces; the secret itself never crosses the
 * wire, and a recorded exchange cannot be replayed against new nonces.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';

import { KvtierError } from '../core/errors.js';
import { NONCE_BYTES } from './protocol.js';

const SERVER_LABEL = Buffer.from('kvtier v1 server', 'latin1');
const CLIENT_LABEL = Buffer.from('kvtier v1 client', 'latin1');

/** A secret shorter than this is refused: it could be guessed offline from one exchange. */
export const MIN_SECRET_BYTES = 16;

export type Secret = Buffer;

export function checkSecret(secret: Buffer | string, from: string): Secret {
  const bytes = typeof secret === 'string' ? Buffer.from(secret.trim(), 'utf8') : secret;
  if (bytes.length < MIN_SECRET_BYTES) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${from} holds ${bytes.length} bytes; a shared secret needs at least ${MIN_SECRET_BYTES}`,
    );
  }
  return bytes;
}

/** Reads a token file: its contents, surrounding whitespace trimmed, are the secret. */
export async function readTokenFile(path: string): Promise<Secret> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `cannot read the token file ${path}`, {
      cause: e,
    });
  }
  return checkSecret(text, `token file ${path}`);
}

export function nonce(): Buffer {
  return randomBytes(NONCE_BYTES);
}

/**
 * A tenant's name (docs/tenants.md): what a client may name in AUTH, and what `serve --tenants`
 * accepts in its config. ASCII only, so its bytes on the wire are its characters.
 */
export const TENANT_NAME = /^[A-Za-z0-9._-]{1,64}$/;
export const TENANT_NAME_MAX = 64;

const NO_TENANT = Buffer.alloc(0);

/**
 * Both proofs cover the tenant the client named (its ASCII bytes, nothing when it named none, so
 * a connection without a tenant computes exactly the proofs of protocol version 1 before tenants).
 */
function mac(secret: Secret, label: Buffer, a: Buffer, b: Buffer, tenant: Buffer): Buffer {
  return createHmac('sha256', secret).update(label).update(a).update(b).update(tenant).digest();
}

function tenantBytes(tenant: string | undefined): Buffer {
  return tenant === undefined ? NO_TENANT : Buffer.from(tenant, 'latin1');
}

/** The server's proof, over the client's nonce, its own, then the tenant named. */
export function serverProof(
  secret: Secret,
  clientNonce: Buffer,
  serverNonce: Buffer,
  tenant?: string,
): Buffer {
  return mac(secret, SERVER_LABEL, clientNonce, serverNonce, tenantBytes(tenant));
}

/** The client's proof, over the server's nonce, its own, then the tenant named. */
export function clientProof(
  secret: Secret,
  serverNonce: Buffer,
  clientNonce: Buffer,
  tenant?: string,
): Buffer {
  return mac(secret, CLIENT_LABEL, serverNonce, clientNonce, tenantBytes(tenant));
}

export function proofMatches(expected: Buffer, got: Buffer): boolean {
  return expected.length === got.length && timingSafeEqual(expected, got);
}
