/**
 * The native TCP transport refuses bad arguments before anything reaches its thread: spans outside
 * their target, closed regions, receive areas outside a region, non-numeric addresses.
 */
import { describe, expect, it } from 'vitest';

import { Region } from '../../lib/index.js';
import { native, type NetEvent } from '../../lib/core/native.js';

function transport(): InstanceType<ReturnType<typeof native>['NativeTcpTransport']> {
  return new (native().NativeTcpTransport)({ maxConnections: 4 }, (_: NetEvent[]) => {});
}

describe('native TCP transport arguments', () => {
  it('refuses spans outside their target, and closed regions', async () => {
    const t = transport();
    const region = Region.allocate(4096);
    try {
      const head = new Uint8Array(24);
      const bad = [
        new Float64Array([0, 4000, 200]), // past the end
        new Float64Array([0, -1, 10]),
        new Float64Array([1, 0, 10]), // no such target
        new Float64Array([0, 0.5, 10]),
        new Float64Array([0, 0]), // not a triple
      ];
      for (const spans of bad) {
        expect(() => t.send(1, head, [region.native], spans, 0, false)).toThrow(
          expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }) as Error,
        );
      }
      expect(() =>
        t.send(1, head, [Buffer.alloc(8)], new Float64Array([0, 0, 8]), 0, false, 0x13, 1, new Float64Array([0, 4, 8])),
      ).toThrow(expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }) as Error);
      expect(() => t.provide(region.native, 4000, 200, 0)).toThrow(
        expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }) as Error,
      );
      await region.close();
      expect(() => t.send(1, head, [region.native], new Float64Array([0, 0, 8]), 0, false)).toThrow(
        expect.objectContaining({ code: 'KVTIER_CLOSED' }) as Error,
      );
    } finally {
      t.close();
    }
  });

  it('refuses names where it needs numeric addresses, and bad ports', () => {
    const t = transport();
    try {
      expect(() => t.listen('localhost', 0)).toThrow(
        expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }) as Error,
      );
      expect(() => t.listen('127.0.0.1', 70000)).toThrow(
        expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }) as Error,
      );
      expect(() => t.connect('127.0.0.1', 0)).toThrow(
        expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }) as Error,
      );
      const { port } = t.listen('127.0.0.1', 0);
      expect(port).toBeGreaterThan(0);
    } finally {
      t.close();
    }
    expect(() => t.listen('127.0.0.1', 0)).toThrow(
      expect.objectContaining({ code: 'KVTIER_CLOSED' }) as Error,
    );
  });
});
