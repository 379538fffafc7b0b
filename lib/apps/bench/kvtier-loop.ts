/** kvtier's side of the file benchmark: one pass over a file through an IoEngine. */
import {
  type IoEngine,
  type KvFile,
  KvtierError,
  type Region,
  TransferBatch,
} from '../../index.js';
import type { Op } from './fio.js';
import type { LoopResult } from './node-loop.js';

export interface KvtierLoopSpec {
  engine: IoEngine;
  file: KvFile;
  /** Memory the transfers use, blockSize-sized slots reused round-robin. */
  region: Region;
  op: Op;
  blockSize: number;
  /** Block indices in the order to visit them. */
  order: Uint32Array;
  /**
   * Descriptors per batch; the whole pass by default. Smaller batches are submitted as a pipeline
   * with `batchesInFlight` outstanding at once.
   */
  batchSize?: number;
  batchesInFlight?: number;
}

function buildBatch(spec: KvtierLoopSpec, from: number, to: number, slots: number): TransferBatch {
  const { file, region, op, blockSize, order } = spec;
  const batch = new TransferBatch();
  for (let i = from; i < to; i++) {
    const fileOffset = (order[i] as number) * blockSize;
    const regionOffset = (i % slots) * blockSize;
    if (op === 'read') batch.read(file, fileOffset, region, regionOffset, blockSize);
    else batch.write(file, fileOffset, region, regionOffset, blockSize);
  }
  return batch;
}

/** One timed pass; the time covers building the batches, submitting them and their completion. */
export async function runKvtierLoop(spec: KvtierLoopSpec): Promise<LoopResult> {
  const { engine, region, blockSize, order } = spec;
  const n = order.length;
  const slots = Math.floor(region.byteLength / blockSize);
  if (slots < 1) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `the region holds no block of ${blockSize} bytes`);
  }
  const batchSize = Math.max(1, Math.min(spec.batchSize ?? n, n));
  const window = Math.max(1, spec.batchesInFlight ?? 2);
  let bytes = 0;
  let next = 0;
  const check = (r: Awaited<ReturnType<IoEngine['submit']>>): void => {
    r.throwIfFailed();
    for (const b of r.bytes) bytes += b;
  };
  const lane = async (): Promise<void> => {
    while (next < n) {
      const from = next;
      next = Math.min(n, next + batchSize);
      check(await engine.submit(buildBatch(spec, from, next, slots)));
    }
  };
  const start = process.hrtime.bigint();
  await Promise.all(Array.from({ length: batchSize >= n ? 1 : window }, lane));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (bytes !== n * blockSize) {
    throw new KvtierError('KVTIER_IO', `kvtier moved ${bytes} bytes, expected ${n * blockSize}`);
  }
  return { bytes, seconds, gbps: bytes / seconds / 1e9 };
}
