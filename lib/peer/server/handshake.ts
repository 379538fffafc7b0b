/**
 * The server's side of the handshake (docs/protocol.md, Handshake): HELLO answered by CHALLENGE,
 * AUTH by READY once the client's proof checks out, and on a verbs connection VERBS_CONNECT by
 * VERBS_READY. A connection that breaks a rule is answered with ERROR and closed.
 */
import { randomBytes } from 'node:crypto';

import type { NetEvent } from '../../core/native.js';
import { clientProof, nonce, proofMatches, serverProof } from '../auth.js';
import {
  decodeAuth,
  decodeHello,
  decodeVerbsAddress,
  encodeChallenge,
  encodeReady,
  encodeVerbsAddress,
  type Auth,
  type Hello,
} from '../handshake-codec.js';
import {
  Capability,
  ErrorKind,
  frame,
  maxMetaFor,
  MsgType,
  PROTOCOL_VERSION,
} from '../protocol.js';
import { MAX_CALL_BYTES } from '../call-codec.js';
import { TCP, transportOfId, VERBS } from '../transports.js';
import type { ConnState } from './conn.js';
import type { ServerCore } from './core.js';

export class ServerHandshake {
  /** The secret of tenants that do not exist: random, never stored or sent. */
  private readonly nobody = randomBytes(32);

  constructor(private readonly core: ServerCore) {}

  /** A frame of a connection still in its handshake. */
  onFrame(state: ConnState, ev: NetEvent): void {
    const meta = ev.meta!;
    if (state.phase === 'hello') return this.onHello(state, ev.type!, meta);
    if (state.phase === 'auth') return this.onAuth(state, ev.type!, meta);
    return this.onVerbsConnect(state, ev);
  }

  private onHello(state: ConnState, type: number, meta: Buffer): void {
    const { core } = this;
    let hello: Hello | undefined;
    try {
      if (type === MsgType.HELLO) hello = decodeHello(meta);
    } catch {
      hello = undefined;
    }
    if (!hello) return core.drop(state, ErrorKind.PROTOCOL, 'expected HELLO');
    if (hello.version !== PROTOCOL_VERSION) {
      return core.drop(
        state,
        ErrorKind.VERSION,
        `this server speaks protocol version ${PROTOCOL_VERSION}, not ${hello.version}`,
      );
    }
    const mine = core.blockBytes;
    if (hello.blockBytes !== 0 && hello.blockBytes !== mine) {
      return core.drop(
        state,
        ErrorKind.BLOCK_SIZE,
        `this server stores blocks of ${mine} bytes, not ${hello.blockBytes}`,
      );
    }
    state.clientNonce = hello.clientNonce;
    state.serverNonce = nonce();
    const challenge = encodeChallenge({
      version: PROTOCOL_VERSION,
      capabilities: this.capabilities(),
      blockBytes: mine,
      maxBatch: core.maxBatch,
      maxMeta: maxMetaFor(core.maxBatch) + MAX_CALL_BYTES,
      maxPayload: core.maxBatch * mine,
      serverNonce: state.serverNonce,
    });
    state.phase = 'auth';
    core.net.send(state.id, frame(MsgType.CHALLENGE, 0, challenge));
  }

  private capabilities(): number {
    const { core } = this;
    return (
      TCP.capability |
      (core.transport.verbs ? VERBS.capability : 0) |
      (core.landing.enabled && !core.options.tenants ? Capability.LANDS : 0) |
      (core.options.warehouse.hostSlots.persists ? Capability.DURABLE : 0) |
      (core.options.tenants ? Capability.TENANTS : 0) |
      Capability.CALLS
    );
  }

  /**
   * The secret AUTH's proof must be signed with: the named tenant's token; the operator's when
   * none is named (or the only secret, on a server without tenants). A tenant this server does not
   * have gets a secret nobody holds, so its proof fails exactly as a wrong token's does: the same
   * work, the same ERROR, the same log line, and no way to learn which names exist.
   */
  private secretFor(tenant: string | undefined): Buffer {
    const { options } = this.core;
    if (tenant === undefined) return options.secret;
    return options.tenants?.tokens.get(tenant) ?? this.nobody;
  }

  private onAuth(state: ConnState, type: number, meta: Buffer): void {
    const { core } = this;
    let auth: Auth | undefined;
    try {
      if (type === MsgType.AUTH) auth = decodeAuth(meta);
    } catch {
      auth = undefined;
    }
    if (!auth) return core.drop(state, ErrorKind.PROTOCOL, 'expected AUTH');
    const tenant = auth.tenant;
    const secret = this.secretFor(tenant);
    const expected = clientProof(secret, state.serverNonce!, state.clientNonce!, tenant);
    if (!proofMatches(expected, auth.proof)) {
      // The log names the peer, never the secret or the proofs.
      core.log('auth_failed', { conn: state.id, remote: state.remote });
      return core.drop(state, ErrorKind.AUTH, 'authentication failed');
    }
    const transport = transportOfId(auth.transport, core.transport.verbs);
    if (!transport) {
      return core.drop(
        state,
        ErrorKind.TRANSPORT,
        `transport ${auth.transport} is not available here`,
      );
    }
    state.transport = transport;
    const tenants = core.options.tenants;
    if (tenants && tenant !== undefined) {
      // Bound for the connection's life: every request goes through this view, whose keys live
      // in the tenant's namespace, whatever the client sends.
      state.tenant = tenant;
      state.store = tenants.view(tenant);
    } else if (tenants) {
      state.operator = true;
    } else {
      state.store = core.options.warehouse;
    }
    // A verbs connection sets up its queue pairs (VERBS_CONNECT) before any request, within the
    // handshake's time limit.
    if (!transport.queuePairs) clearTimeout(state.timer);
    state.phase = transport.queuePairs ? 'verbs' : 'ready';
    const bs = core.blockBytes;
    // Only now may the peer send frames larger than a handshake.
    core.net.setLimits(
      state.id,
      maxMetaFor(core.maxBatch) + MAX_CALL_BYTES,
      core.maxBatch * bs,
      Math.max(1, core.queueLimit),
      { type: MsgType.GET, unit: bs },
    );
    // The server proves itself only to a client that proved itself first: nobody without the
    // secret gets an HMAC computed with it.
    const proof = serverProof(secret, state.clientNonce!, state.serverNonce!, tenant);
    core.net.send(
      state.id,
      frame(MsgType.READY, 0, encodeReady({ proof, transport: transport.id })),
    );
    core.log('connection_ready', {
      conn: state.id,
      remote: state.remote,
      transport: transport.kind,
      ...(state.tenant !== undefined ? { tenant: state.tenant } : {}),
      ...(state.operator ? { operator: true } : {}),
    });
  }

  /** The client's queue pair address: the server connects its own and answers with it. */
  private onVerbsConnect(state: ConnState, ev: NetEvent): void {
    const { core } = this;
    let address: Buffer | undefined;
    try {
      if (ev.type === MsgType.VERBS_CONNECT) address = decodeVerbsAddress(ev.meta!);
    } catch {
      address = undefined;
    }
    if (!address) return core.drop(state, ErrorKind.PROTOCOL, 'expected VERBS_CONNECT');
    if ((ev.payloadBytes ?? 0) !== 0) {
      return core.drop(state, ErrorKind.PROTOCOL, 'VERBS_CONNECT carries no payload');
    }
    const verbs = core.verbs!;
    let qp: { id: number; address: Buffer } | undefined;
    try {
      qp = verbs.createQueuePair();
      verbs.connectQueuePair(qp.id, address);
    } catch (e) {
      if (qp) verbs.destroyQueuePair(qp.id);
      return core.drop(state, ErrorKind.TRANSPORT, `verbs: ${(e as Error).message}`);
    }
    clearTimeout(state.timer);
    state.qp = qp.id;
    state.phase = 'ready';
    core.net.send(state.id, frame(MsgType.VERBS_READY, 0, encodeVerbsAddress(qp.address)));
    core.log('verbs_connected', { conn: state.id, remote: state.remote });
  }
}
