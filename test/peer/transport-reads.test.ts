import { describe, expect, it } from 'vitest';

import type { NetEvent } from '../../lib/core/native.js';
import { Net } from '../../lib/peer/net.js';
import { frame } from '../../lib/peer/protocol.js';
import { randomBytes } from '../helpers.js';

const MiB = 1 << 20;

describe('the TCP transport reading a connection', () => {
  it('delivers a small frame queued behind more large payloads than one read pass takes', async () => {
    // Twelve 1 MiB payloads then a frame without one, all sent at once: the reader stops after
    // its budget with bytes still queued, and must still be told about the rest (the low-water
    // mark it sets while a payload is owed must never outlive that payload).
    const src = randomBytes(12 * MiB);
    const got: NetEvent[] = [];
    let allIn!: () => void;
    const done = new Promise<void>((r) => (allIn = r));
    const server = new Net({
      onAccept: (conn) => {
        server.setLimits(conn, 4096, 64 * MiB);
        // Commands run in order: once the client hears this, the limits above are in force.
        server.send(conn, frame(0x7f, 0, Buffer.alloc(8)));
        return {
          onFrame: (ev) => {
            got.push(ev);
            if (got.length === 13) allIn();
          },
          onClose: () => allIn(),
        };
      },
    });
    const client = new Net();
    server.ref();
    client.ref();
    try {
      const { port } = server.listen('127.0.0.1', 0);
      const conn = client.connect('127.0.0.1', port, {
        onFrame: () => {
          for (let i = 0; i < 12; i++) {
            const spans = new Float64Array([0, i * MiB, MiB]);
            client.send(conn, frame(0x10, i + 1, Buffer.alloc(8), MiB), [src], spans);
          }
          client.send(conn, frame(0x14, 13, Buffer.alloc(8)));
        },
        onClose: () => allIn(),
      });
      await done;
      expect(got.map((e) => e.requestId)).toEqual(Array.from({ length: 13 }, (_, i) => i + 1));
      got.slice(0, 12).forEach((e, i) => {
        expect(e.payloadBytes).toBe(MiB);
        expect(Buffer.from(e.payload!).equals(src.subarray(i * MiB, (i + 1) * MiB))).toBe(true);
      });
      expect(got[12]!.payloadBytes).toBe(0);
    } finally {
      client.unref();
      server.unref();
      client.close();
      server.close();
    }
  });
});
