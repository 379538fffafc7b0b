/**
 * `kvtier serve --metrics HOST:PORT`: Prometheus text over HTTP (prom-client, its own Registry).
 *
 * Almost every figure is read at scrape time from what the library already counts
 * (`Warehouse.stats()`, the PeerServer's connection and transport counters, the engine channel's
 * counters), so serving metrics costs the data path nothing. Two things are observed as they
 * happen: request latencies (the peer server's Warehouse view in timed-warehouse.ts, the engine
 * channel's request observer) and the servers' log events (authentication failures, dropped
 * connections), counted by wrapping the log function they are given. docs/metrics.md maps every
 * metric to its source.
 */
import { createServer, type Server } from 'node:http';

import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

import { KvtierError, type PeerServer, type Warehouse } from '../../index.js';
import type { EngineChannel } from '../../internal.js';
import type { Log } from './serve-lifecycle.js';
import { registerTenantMetrics, type TenantFigures } from './serve-metrics-tenants.js';
import { timedTenantView, timedWarehouse } from './timed-warehouse.js';

/** Seconds: 50 us (a host-tier hit) to 10 s (a large batch from a slow disk). */
const LATENCY_BUCKETS = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
  5, 10,
];

/** HOST:PORT, [V6]:PORT, or a bare PORT (then loopback: metrics are not for the whole network). */
export function parseMetricsAddress(text: string): { host: string; port: number } {
  const m = /^(?:(?:\[([^\]]+)\]|([^:/\s]+)):)?(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `--metrics must be HOST:PORT or PORT (port 0 to 65535), not '${text}'`,
    );
  }
  return { host: m[1] ?? m[2] ?? '127.0.0.1', port };
}

type Labels = Record<string, string>;
type Reading = readonly [Labels, number];

export class ServeMetrics {
  readonly registry = new Registry();
  private peer: PeerServer | undefined;
  private engines: EngineChannel | undefined;
  private readonly events = { peer: new Map<string, number>(), engine: new Map<string, number>() };
  private readonly engineErrors = new Map<string, number>();
  private readonly latency: Histogram<'channel' | 'op'>;
  private http: Server | undefined;

  constructor(private readonly warehouse: Warehouse) {
    const r = this.registry;
    collectDefaultMetrics({ register: r });
    this.latency = new Histogram({
      name: 'kvtier_operation_duration_seconds',
      help: 'Seconds per request batch, by channel (peer, engine) and op (get, put; save, load, ...)',
      labelNames: ['channel', 'op'],
      buckets: LATENCY_BUCKETS,
      registers: [r],
    });
    this.warehouseMetrics();
    // Only a warehouse with tenants has per-tenant series.
    const tenants = (): readonly TenantFigures[] | undefined =>
      (this.warehouse.stats() as { tenants?: TenantFigures[] }).tenants;
    if (tenants() !== undefined) registerTenantMetrics(r, () => tenants() ?? []);
  }

  /** A counter whose values are read at scrape time (the sources count; this only reports). */
  private counter(name: string, help: string, labels: string[], read: () => Reading[]): void {
    new Counter({
      name,
      help,
      labelNames: labels,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [l, v] of read()) this.inc(l, v);
      },
    });
  }

  private gauge(name: string, help: string, labels: string[], read: () => Reading[]): void {
    new Gauge({
      name,
      help,
      labelNames: labels,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [l, v] of read()) this.set(l, v);
      },
    });
  }

  private warehouseMetrics(): void {
    const wh = (): ReturnType<Warehouse['stats']> => this.warehouse.stats();
    const total = (name: string, help: string, field: 'gets' | 'hits' | 'misses'): void =>
      this.counter(name, help, [], () => [[{}, wh()[field]]]);
    total('kvtier_gets_total', 'Keys asked for by get()', 'gets');
    total('kvtier_hits_total', 'Keys get() found in some tier', 'hits');
    total('kvtier_misses_total', 'Keys get() found in no tier', 'misses');
    this.counter('kvtier_remote_hits_total', 'Hits served by another cluster node', [], () => [
      [{}, wh().remoteHits],
    ]);
    this.counter('kvtier_corrupt_blocks_total', 'Blocks whose checksum failed', [], () => [
      [{}, wh().corrupt],
    ]);
    this.counter('kvtier_io_errors_total', 'Tier reads and writes that failed', [], () => [
      [{}, wh().ioErrors],
    ]);
    this.gauge('kvtier_blocks', 'Distinct blocks held', [], () => [[{}, wh().blocks]]);
    this.gauge('kvtier_block_bytes', 'Bytes per block', [], () => [[{}, wh().blockBytes]]);
    type Field = 'hits' | 'misses' | 'bytesIn' | 'bytesOut' | 'evictions' | 'promotions';
    type Field2 = 'demotions' | 'corrupt' | 'ioErrors' | 'errors' | 'usedBlocks' | 'capacityBlocks';
    const perTier = (field: Field | Field2): Reading[] =>
      wh().tiers.flatMap((t): Reading[] => {
        const v = t[field];
        return v === undefined ? [] : [[{ tier: t.name, kind: t.kind }, v]];
      });
    const tier = (name: string, help: string, field: Field | Field2): void =>
      this.counter(name, help, ['tier', 'kind'], () => perTier(field));
    tier('kvtier_tier_hits_total', 'Keys a get found first in this tier', 'hits');
    tier('kvtier_tier_misses_total', 'Keys a get looked for here and did not find', 'misses');
    tier('kvtier_tier_bytes_in_total', 'Bytes written into this tier', 'bytesIn');
    tier('kvtier_tier_bytes_out_total', 'Bytes read out of this tier', 'bytesOut');
    tier('kvtier_tier_evictions_total', 'Blocks evicted from this tier', 'evictions');
    tier('kvtier_tier_promotions_total', 'Blocks copied up into this tier', 'promotions');
    tier('kvtier_tier_demotions_total', 'Blocks moved down out of this tier', 'demotions');
    tier(
      'kvtier_tier_corrupt_blocks_total',
      'Blocks of this tier whose checksum failed',
      'corrupt',
    );
    tier(
      'kvtier_tier_io_errors_total',
      'Reads and writes of this local tier that failed',
      'ioErrors',
    );
    tier('kvtier_tier_errors_total', 'Failed operations of a source tier (a peer)', 'errors');
    const level = (name: string, help: string, field: Field2): void =>
      this.gauge(name, help, ['tier', 'kind'], () => perTier(field));
    level('kvtier_tier_used_blocks', 'Slots of this tier holding a block', 'usedBlocks');
    level('kvtier_tier_capacity_blocks', 'Slots of this tier', 'capacityBlocks');
    this.gauge(
      'kvtier_tier_stored_block_bytes',
      'Bytes one block takes in this local tier, encoded by its codec if it has one',
      ['tier', 'kind', 'codec'],
      () =>
        wh().tiers.flatMap((t): Reading[] => {
          if (t.storedBlockBytes === undefined) return [];
          const codec = typeof t.codec === 'object' ? t.codec.codec : 'none';
          return [[{ tier: t.name, kind: t.kind, codec }, t.storedBlockBytes]];
        }),
    );
    // Only a warehouse opened with predictivePrefetch has these series.
    if (wh().predictivePrefetch !== undefined) this.prefetchMetrics(wh);
  }

  /** Predictive prefetch's counters (stats().predictivePrefetch), per tier staged into. */
  private prefetchMetrics(wh: () => ReturnType<Warehouse['stats']>): void {
    type Field = 'staged' | 'read' | 'evictedUnread' | 'restaged' | 'resident';
    const perTier = (field: Field) => (): Reading[] =>
      (wh().predictivePrefetch?.tiers ?? []).map((t): Reading => [{ tier: t.name }, t[field]]);
    const staged = (name: string, help: string, field: Field): void =>
      this.counter(name, help, ['tier'], perTier(field));
    staged('kvtier_prefetch_staged_blocks_total', 'Blocks staged up into this tier', 'staged');
    staged('kvtier_prefetch_read_blocks_total', 'Staged blocks a get read here', 'read');
    staged(
      'kvtier_prefetch_evicted_unread_blocks_total',
      'Staged blocks that left this tier unread',
      'evictedUnread',
    );
    staged(
      'kvtier_prefetch_restaged_blocks_total',
      'Staged blocks staged again one tier further up before a read',
      'restaged',
    );
    this.gauge(
      'kvtier_prefetch_resident_blocks',
      'Staged blocks still in this tier, unread',
      ['tier'],
      perTier('resident'),
    );
    this.counter(
      'kvtier_prefetch_refused_blocks_total',
      'Forecast blocks worth too little',
      [],
      () => [[{}, wh().predictivePrefetch?.refused ?? 0]],
    );
    this.counter(
      'kvtier_prefetch_failed_blocks_total',
      'Forecast blocks whose copy failed (a damaged source, or I/O)',
      [],
      () => [[{}, wh().predictivePrefetch?.failed ?? 0]],
    );
    this.gauge('kvtier_prefetch_active', 'Whether the policy forecasts (1) or not (0)', [], () => [
      [{}, wh().predictivePrefetch?.active ? 1 : 0],
    ]);
  }

  private peerMetrics(): void {
    const peer = (read: (p: PeerServer) => Reading[]) => (): Reading[] =>
      this.peer ? read(this.peer) : [];
    const event = (name: string): number => this.events.peer.get(name) ?? 0;
    this.gauge(
      'kvtier_peer_connections',
      'Peer connections open',
      [],
      peer((p) => [[{}, p.connections]]),
    );
    this.counter(
      'kvtier_peer_connections_opened_total',
      'Peer connections accepted',
      [],
      peer(() => [[{}, event('connection_open')]]),
    );
    this.counter(
      'kvtier_peer_auth_failures_total',
      'Handshakes whose proof was wrong',
      [],
      peer(() => [[{}, event('auth_failed')]]),
    );
    this.counter(
      'kvtier_peer_backpressure_pauses_total',
      'Times a connection stopped being read until its requests drained',
      [],
      peer((p) => [[{}, p.backpressure.pauses]]),
    );
    this.gauge(
      'kvtier_peer_answer_queued_bytes',
      'Answer bytes queued for clients to read, all connections',
      [],
      peer((p) => [[{}, p.netStats().outQueued]]),
    );
    this.counter(
      'kvtier_peer_errors_total',
      'Connections and requests that ended in an error, by reason',
      ['reason'],
      peer((p) => {
        const n = p.netStats();
        return [
          [{ reason: 'auth' }, event('auth_failed')],
          [{ reason: 'refused' }, n.refused],
          [{ reason: 'handshake_evicted' }, n.handshakesEvicted],
          [{ reason: 'payload_stalled' }, n.stalled],
          [{ reason: 'transport_error_frame' }, n.errorFrames],
          [{ reason: 'dropped' }, event('connection_dropped')],
          [{ reason: 'request_failed' }, event('request_failed')],
          [{ reason: 'handler_error' }, event('handler_error')],
          [{ reason: 'lease_expired' }, event('lease_expired')],
        ];
      }),
    );
    this.counter(
      'kvtier_peer_error_frames_total',
      'ERROR frames sent to clients, by the error code they carried (docs/protocol.md)',
      ['code'],
      peer((p) => Object.entries(p.errorsSent()).map(([code, v]): Reading => [{ code }, v])),
    );
    this.counter(
      'kvtier_peer_put_blocks_total',
      'Blocks of peer puts by path: landed in slots, placed by an offer, or copied',
      ['path'],
      peer((p) => Object.entries(p.putBlocks).map(([path, v]): Reading => [{ path }, v])),
    );
  }

  private engineMetrics(): void {
    const engine = (read: (c: EngineChannel['counters']) => Reading[]) => (): Reading[] =>
      this.engines ? read(this.engines.counters) : [];
    this.gauge(
      'kvtier_engine_connections',
      'Engine processes connected',
      [],
      engine((c) => [[{}, c.connected]]),
    );
    this.counter(
      'kvtier_engine_connections_total',
      'Engine connections, by outcome',
      ['outcome'],
      engine((c) => [
        [{ outcome: 'accepted' }, c.connections],
        [{ outcome: 'refused' }, c.refused],
      ]),
    );
    this.counter(
      'kvtier_engine_requests_total',
      'Engine channel requests',
      [],
      engine((c) => [[{}, c.requests]]),
    );
    this.counter(
      'kvtier_engine_errors_total',
      'Engine channel requests answered with an error, by code',
      ['code'],
      engine(() => [...this.engineErrors].map(([code, v]): Reading => [{ code }, v])),
    );
    this.counter(
      'kvtier_engine_saved_blocks_total',
      'Blocks engines saved, by path',
      ['path'],
      engine((c) => [
        [{ path: 'in_place' }, c.savedInPlace],
        [{ path: 'into_slots' }, c.savedIntoSlots],
        [{ path: 'staged' }, c.savedStaged],
      ]),
    );
    this.counter(
      'kvtier_engine_loaded_blocks_total',
      'Blocks engines loaded, by path',
      ['path'],
      engine((c) => [
        [{ path: 'from_slots' }, c.loadedFromSlots],
        [{ path: 'staged' }, c.loadedStaged],
      ]),
    );
  }

  /** The Warehouse as the peer server should see it: its gets and puts timed. */
  peerWarehouse(): Warehouse {
    return timedWarehouse(this.warehouse, (op, s) =>
      this.latency.observe({ channel: 'peer', op }, s),
    );
  }

  /** A tenant's view for the peer server, its operations timed like peerWarehouse()'s. */
  peerTenantView<T extends object>(view: T): T {
    return timedTenantView(view, (op, s) => this.latency.observe({ channel: 'peer', op }, s));
  }

  /** `log`, with each event also counted (authentication failures, dropped connections). */
  countingLog(channel: 'peer' | 'engine', log: Log): Log {
    const counts = this.events[channel];
    return (event, fields) => {
      counts.set(event, (counts.get(event) ?? 0) + 1);
      log(event, fields);
    };
  }

  /** The engine channel's request observer: latency per op, errors per code. */
  engineObserver(): (op: string, seconds: number, code: string | undefined) => void {
    return (op, seconds, code) => {
      this.latency.observe({ channel: 'engine', op }, seconds);
      if (code !== undefined) this.engineErrors.set(code, (this.engineErrors.get(code) ?? 0) + 1);
    };
  }

  /** Registers the metrics of the servers this node runs (and of its cluster, when it is in one). */
  attach(sources: { peer?: PeerServer; engines?: EngineChannel }): void {
    this.peer = sources.peer;
    this.engines = sources.engines;
    if (this.peer) this.peerMetrics();
    if (this.engines) this.engineMetrics();
    if (this.warehouse.stats().cluster) {
      this.gauge('kvtier_cluster_degraded', '1 while the cluster index is unreachable', [], () => [
        [{}, this.warehouse.stats().cluster?.degraded ? 1 : 0],
      ]);
    }
  }

  /** Serves GET /metrics (and / for a browser's first look); resolves with the bound port. */
  async listen(host: string, port: number): Promise<number> {
    const http = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      if (path !== '/metrics' && path !== '/') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('see /metrics\n');
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        (e: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${String(e)}\n`),
      );
    });
    await new Promise<void>((resolve, reject) => {
      http.once('error', (e: NodeJS.ErrnoException) =>
        reject(
          new KvtierError(
            'KVTIER_BAD_ARGUMENT',
            `--metrics cannot listen on ${host}:${port} (${e.code ?? e.message})`,
            { cause: e },
          ),
        ),
      );
      http.listen(port, host, () => resolve());
    });
    this.http = http;
    return (http.address() as { port: number }).port;
  }

  async close(): Promise<void> {
    const http = this.http;
    this.http = undefined;
    if (!http) return;
    http.closeAllConnections();
    await new Promise<void>((resolve) => http.close(() => resolve()));
  }
}
