/**
 * What every form of `kvtier serve` shares: the tiers it reports when listening, and the stop on
 * SIGTERM or SIGINT (servers close first, so requests in flight finish, then the warehouse writes
 * its host-only blocks down and closes).
 */
import type { Warehouse } from '../../index.js';

export type Log = (event: string, fields?: Record<string, unknown>) => void;

/** The tiers as the `listening` log line reports them. */
export function tierSummary(warehouse: Warehouse): Record<string, unknown> {
  const stats = warehouse.stats();
  return {
    blocks: stats.blocks,
    tiers: stats.tiers.map((t) => ({
      name: t.name,
      kind: t.kind,
      capacityBlocks: t.capacityBlocks,
      ...(t.codec !== undefined ? { codec: t.codec } : {}),
    })),
  };
}

/** Resolves once a signal has stopped the servers (closeServers) and closed the warehouse. */
export function serveUntilSignal(
  log: Log,
  warehouse: Warehouse,
  stoppingFields: () => Record<string, unknown>,
  closeServers: () => Promise<void>,
): Promise<void> {
  return new Promise<void>((done) => {
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      log('stopping', { signal, ...stoppingFields() });
      void (async () => {
        await closeServers();
        const blocks = warehouse.stats().blocks;
        await warehouse.close();
        log('stopped', { blocks });
        done();
      })();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
