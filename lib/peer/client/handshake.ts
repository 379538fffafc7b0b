/**
 * The client's side of the handshake (docs/protocol.md, Handshake): HELLO, CHALLENGE, AUTH,
 * READY, then, on a verbs session, the queue pairs (VERBS_CONNECT, VERBS_READY). Resolves with
 * the session once the server has proved it knows the secret; rejects with KVTIER_AUTH,
 * KVTIER_PROTOCOL, KVTIER_PEER, KVTIER_NOT_AVAILABLE or KVTIER_TIMEOUT.
 */
import { KvtierError } from '../../core/errors.js';
import type { NetEvent } from '../../core/native.js';
import { clientProof, nonce, proofMatches, serverProof, type Secret } from '../auth.js';
import {
  decodeChallenge,
  decodeReady,
  decodeVerbsAddress,
  encodeAuth,
  encodeHello,
  encodeVerbsAddress,
} from '../handshake-codec.js';
import type { Net } from '../net.js';
import {
  BATCH_FIXED_BYTES,
  Capability,
  decodeError,
  errorCodeFor,
  frame,
  HANDSHAKE_META_LIMIT,
  MsgType,
  PLACEMENT_BYTES,
  PROTOCOL_VERSION,
  RESULT_ENTRY_BYTES,
} from '../protocol.js';
import { chooseTransport, TCP, VERBS, type Transport } from '../transports.js';
import type { ConnectOptions } from './options.js';
import type { DataPath, Session, SessionEvents } from './session.js';

/** The queue pairs of verbs sessions (verbs-path.ts). */
export interface QueuePairs {
  create(): { id: number; address: Buffer };
  connect(qp: number, address: Buffer): void;
  destroy(qp: number): void;
}

export interface Dial {
  net: Net;
  url: string;
  address: string;
  port: number;
  secret: Secret;
  options: ConnectOptions;
  /** The transport this end would use: verbs only when it has an RDMA device. */
  want: 'tcp' | 'verbs';
  queuePairs: QueuePairs;
  /** The data path of each transport. */
  paths: Record<Transport['kind'], DataPath>;
  /** Why the session's transport was chosen. */
  chose(reason: string): void;
}

export function handshake(d: Dial, events: SessionEvents): Promise<Session> {
  const { net, url, options } = d;
  return new Promise<Session>((resolve, reject) => {
    const clientNonce = nonce();
    let phase: 'connecting' | 'challenge' | 'ready' | 'verbs' | 'done' = 'connecting';
    let session: Session | undefined;
    let serverNonce: Buffer | undefined;
    let conn = 0;
    const limit = options.connectTimeoutMs ?? 10_000;
    const fail = (e: KvtierError): void => {
      if (phase === 'done') return;
      phase = 'done';
      clearTimeout(timer);
      net.unref();
      net.closeConnection(conn, e.message);
      if (session?.qp !== undefined) d.queuePairs.destroy(session.qp);
      reject(e);
    };
    const succeed = (s: Session): void => {
      phase = 'done';
      clearTimeout(timer);
      net.unref();
      resolve(s);
    };
    const protocol = (what: string): void =>
      fail(new KvtierError('KVTIER_PROTOCOL', `${url}: ${what}`));
    const timer = setTimeout(
      () =>
        fail(
          new KvtierError(
            'KVTIER_TIMEOUT',
            `no authenticated connection to ${url} within ${limit} ms`,
          ),
        ),
      limit,
    );

    const onChallenge = (type: number, meta: Buffer): void => {
      if (type !== MsgType.CHALLENGE) return protocol('expected CHALLENGE');
      let c;
      try {
        c = decodeChallenge(meta);
      } catch {
        return protocol('expected CHALLENGE');
      }
      if (c.version !== PROTOCOL_VERSION) {
        return fail(
          new KvtierError(
            'KVTIER_PROTOCOL',
            `${url} speaks protocol version ${c.version}, not ${PROTOCOL_VERSION}`,
          ),
        );
      }
      serverNonce = c.serverNonce;
      const serverTenants = (c.capabilities & Capability.TENANTS) !== 0;
      if (options.tenant !== undefined && !serverTenants) {
        return fail(new KvtierError('KVTIER_AUTH', `${url} serves no tenants`));
      }
      const transport =
        d.want === 'verbs' && (c.capabilities & VERBS.capability) !== 0 ? VERBS : TCP;
      if (options.transport === 'verbs' && transport !== VERBS) {
        return fail(new KvtierError('KVTIER_NOT_AVAILABLE', `${url} does not offer verbs`));
      }
      session = {
        conn,
        blockBytes: c.blockBytes,
        maxBatch: c.maxBatch,
        maxMeta: c.maxMeta,
        maxPayload: c.maxPayload,
        transport,
        path: d.paths[transport.kind],
        lands: (c.capabilities & Capability.LANDS) !== 0,
        durable: (c.capabilities & Capability.DURABLE) !== 0,
        tenants: serverTenants,
        calls: (c.capabilities & Capability.CALLS) !== 0,
      };
      if (session.blockBytes < 1 || session.maxBatch < 1) return protocol('bad limits');
      d.chose(
        transport === VERBS
          ? 'verbs: both ends have an RDMA device'
          : d.want === 'verbs'
            ? 'tcp: the server offers no verbs'
            : (chooseTransport(options.transport ?? 'auto').reason ?? 'tcp'),
      );
      const proof = clientProof(d.secret, serverNonce, clientNonce, options.tenant);
      phase = 'ready';
      // Answers may be as large as the largest batch the server allows (with a placement per
      // entry over verbs).
      const resultMeta =
        BATCH_FIXED_BYTES + session.maxBatch * (RESULT_ENTRY_BYTES + PLACEMENT_BYTES);
      net.setLimits(conn, Math.max(resultMeta, HANDSHAKE_META_LIMIT), session.maxPayload);
      const auth = encodeAuth({
        proof,
        transport: transport.id,
        ...(options.tenant !== undefined ? { tenant: options.tenant } : {}),
      });
      net.send(conn, frame(MsgType.AUTH, 0, auth));
    };

    const onReady = (type: number, meta: Buffer): void => {
      let proof: Buffer | undefined;
      try {
        if (type === MsgType.READY) proof = decodeReady(meta).proof;
      } catch {
        proof = undefined;
      }
      if (!proof || !session) return protocol('expected READY');
      if (!proofMatches(serverProof(d.secret, clientNonce, serverNonce!, options.tenant), proof)) {
        return fail(new KvtierError('KVTIER_AUTH', `${url} could not prove it knows the secret`));
      }
      if (!session.transport.queuePairs) return succeed(session);
      // The control channel is up; now the queue pairs (docs/protocol.md, verbs).
      try {
        const qp = d.queuePairs.create();
        session.qp = qp.id;
        phase = 'verbs';
        net.send(conn, frame(MsgType.VERBS_CONNECT, 0, encodeVerbsAddress(qp.address)));
      } catch (e) {
        fail(
          e instanceof KvtierError
            ? e
            : new KvtierError('KVTIER_NOT_AVAILABLE', String(e), { cause: e }),
        );
      }
    };

    const onVerbsReady = (type: number, meta: Buffer): void => {
      let address: Buffer | undefined;
      try {
        if (type === MsgType.VERBS_READY) address = decodeVerbsAddress(meta);
      } catch {
        address = undefined;
      }
      if (!address) return protocol('expected VERBS_READY');
      try {
        d.queuePairs.connect(session!.qp!, address);
      } catch (e) {
        return fail(
          new KvtierError('KVTIER_PEER', `${url}: ${(e as Error).message}`, { cause: e }),
        );
      }
      succeed(session!);
    };

    net.ref();
    try {
      conn = net.connect(d.address, d.port, {
        onConnected: () => {
          const hello = encodeHello({
            version: PROTOCOL_VERSION,
            capabilities: TCP.capability | (d.want === 'verbs' ? VERBS.capability : 0),
            blockBytes: options.blockBytes ?? 0,
            clientNonce,
          });
          phase = 'challenge';
          net.send(conn, frame(MsgType.HELLO, 0, hello));
        },
        onFrame: (ev: NetEvent) => {
          if (phase === 'done') return events.onFrame(ev);
          const meta = ev.meta!;
          if (ev.type === MsgType.ERROR) {
            const { kind, message } = decodeError(meta);
            return fail(new KvtierError(errorCodeFor(kind), `${url}: ${message}`));
          }
          if (phase === 'challenge') return onChallenge(ev.type!, meta);
          if (phase === 'verbs') return onVerbsReady(ev.type!, meta);
          return onReady(ev.type!, meta);
        },
        onClose: (errno, why) => {
          if (phase !== 'done') {
            fail(
              new KvtierError('KVTIER_PEER', `cannot reach ${url}: ${why}`, {
                ...(errno ? { errno } : {}),
              }),
            );
            return;
          }
          events.onClose(conn, errno, why);
        },
      });
    } catch (e) {
      fail(
        e instanceof KvtierError
          ? e
          : new KvtierError('KVTIER_PEER', `cannot reach ${url}`, { cause: e }),
      );
    }
  });
}
