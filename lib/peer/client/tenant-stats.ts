/**
 * The operator's one question to a server with tenants (`kvtier tenants`): STATS, answered by
 * STATS_RESULT with the statistics of every tenant as JSON (docs/protocol.md, Tenants). One
 * connection, one request, closed again: no session, no reconnecting, no data path.
 */
import { lookup as dnsLookup } from 'node:dns/promises';

import { KvtierError } from '../../core/errors.js';
import { string } from '../../core/validate.js';
import { Net } from '../net.js';
import {
  decodeError,
  errorCodeFor,
  frame,
  MAX_STATS_BYTES,
  MsgType,
  parseAddress,
} from '../protocol.js';
import { handshake } from './handshake.js';
import { checkConnectOptions, secretOf, type ConnectOptions } from './options.js';
import type { DataPath } from './session.js';

/** The statistics of every tenant of the server at `url`, asked with the operator's token. */
export async function tenantStats(
  url: string,
  given: Omit<ConnectOptions, 'tenant'>,
): Promise<unknown> {
  const { host, port } = parseAddress(string(url, 'url'));
  const options = checkConnectOptions({ ...given, transport: 'tcp' });
  const secret = await secretOf(options);
  const { address } = await dnsLookup(host).catch((e: unknown) => {
    throw new KvtierError('KVTIER_PEER', `cannot resolve ${host}`, { cause: e });
  });
  const net = new Net();
  let answer: ((meta: Buffer, type: number) => void) | undefined;
  let closed: ((why: string) => void) | undefined;
  const none = undefined as unknown as DataPath;
  try {
    const session = await handshake(
      {
        net,
        url,
        address,
        port,
        secret,
        options,
        want: 'tcp',
        queuePairs: {
          create: () => {
            throw new KvtierError('KVTIER_NOT_AVAILABLE', 'no verbs here');
          },
          connect: () => {},
          destroy: () => {},
        },
        paths: { tcp: none, verbs: none },
        chose: () => {},
      },
      {
        onFrame: (ev) => answer?.(ev.meta ?? Buffer.alloc(0), ev.type!),
        onClose: (_conn, _errno, why) => closed?.(why),
      },
    );
    if (!session.tenants) {
      throw new KvtierError('KVTIER_NOT_AVAILABLE', `${url} serves no tenants`);
    }
    net.setLimits(session.conn, MAX_STATS_BYTES, 0);
    const meta = await new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new KvtierError('KVTIER_TIMEOUT', `${url}: no STATS_RESULT in time`)),
        options.timeoutMs ?? 30_000,
      );
      const settle = (): void => {
        clearTimeout(timer);
        net.unref();
      };
      answer = (m, type) => {
        settle();
        if (type === MsgType.ERROR) {
          const { kind, message } = decodeError(m);
          reject(new KvtierError(errorCodeFor(kind), `${url}: ${message}`));
        } else if (type !== MsgType.STATS_RESULT) {
          reject(new KvtierError('KVTIER_PROTOCOL', `${url}: expected STATS_RESULT`));
        } else resolve(m);
      };
      closed = (why) => {
        settle();
        reject(new KvtierError('KVTIER_PEER', `${url} closed the connection: ${why}`));
      };
      net.ref();
      net.send(session.conn, frame(MsgType.STATS, 1, Buffer.alloc(0)));
    });
    try {
      return JSON.parse(meta.toString('utf8')) as unknown;
    } catch (e) {
      throw new KvtierError('KVTIER_PROTOCOL', `${url}: STATS_RESULT is not JSON`, { cause: e });
    }
  } finally {
    answer = undefined;
    closed = undefined;
    net.close();
  }
}
