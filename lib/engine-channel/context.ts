/** What the engine channel's handlers share: the Warehouse, the pools, buffers and counters. */
import { createEngine, type IoEngine } from '../core/engine.js';
import { createCopyEngine } from '../core/gpu/engines.js';
import type { Lease, Warehouse } from '../warehouse/warehouse.js';
import { PoolRegistry, type Pool } from './pools.js';
import { Staging } from './staging.js';

export type Log = (event: string, fields?: Record<string, unknown>) => void;

/**
 * Told of every request a session served: its op, seconds from dispatch to answer, and the error
 * code it failed with (undefined when it succeeded). For metrics; requests are not timed without.
 */
export type RequestObserver = (op: string, seconds: number, code: string | undefined) => void;

export interface EngineCounters {
  connections: number;
  connected: number;
  refused: number;
  requests: number;
  errors: number;
  saves: number;
  savedBlocks: number;
  loads: number;
  loadedBlocks: number;
  lookups: number;
  /** Blocks by path: put straight from the pool, gathered into reserved slots, or staged. */
  savedInPlace: number;
  savedIntoSlots: number;
  savedStaged: number;
  /** Blocks by path: scattered from lent host-tier slots, or staged through get. */
  loadedFromSlots: number;
  loadedStaged: number;
}

/** Most keys a save or load may carry: what one staging buffer holds (at most 64 MiB). */
export function maxBatchFor(blockBytes: number): number {
  return Math.max(1, Math.min(4096, Math.floor((64 << 20) / blockBytes)));
}

export class ChannelContext {
  readonly registry = new PoolRegistry();
  readonly staging: Staging;
  readonly maxBatch: number;
  readonly counters: EngineCounters = {
    connections: 0,
    connected: 0,
    refused: 0,
    requests: 0,
    errors: 0,
    saves: 0,
    savedBlocks: 0,
    loads: 0,
    loadedBlocks: 0,
    lookups: 0,
    savedInPlace: 0,
    savedIntoSlots: 0,
    savedStaged: 0,
    loadedFromSlots: 0,
    loadedStaged: 0,
  };
  /** Numbers the saves and loads that name no request (handlers.ts, callOf). */
  callSerial = 0;
  private hostEngine: IoEngine | undefined;
  private readonly gpuEngines = new Map<number, IoEngine>();

  constructor(
    readonly warehouse: Warehouse,
    readonly log: Log,
    readonly observe?: RequestObserver,
  ) {
    this.maxBatch = maxBatchFor(warehouse.blockBytes);
    this.staging = new Staging(this.maxBatch * warehouse.blockBytes);
  }

  get blockBytes(): number {
    return this.warehouse.blockBytes;
  }

  /** The engine that gathers and scatters a pool's blocks (memory threads, or a GPU's copies). */
  engineFor(pool: Pool): IoEngine {
    if (pool.memory.kind === 'memfd') {
      this.hostEngine ??= createEngine({ kind: 'threads', queueDepth: 2 });
      return this.hostEngine;
    }
    const device = (pool.memory.target as { device: number }).device;
    let engine = this.gpuEngines.get(device);
    if (!engine) {
      engine = createCopyEngine({ device });
      this.gpuEngines.set(device, engine);
    }
    return engine;
  }

  async close(): Promise<void> {
    await this.staging.close();
    await Promise.all([
      this.hostEngine?.close(),
      ...[...this.gpuEngines.values()].map((e) => e.close()),
    ]);
  }
}

/** What one connection owns. */
export interface SessionState {
  readonly pid: number;
  readonly uid: number;
  name: string;
  readonly pools: Map<string, Pool>;
  readonly leases: Map<number, Lease>;
}
