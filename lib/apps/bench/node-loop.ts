/**
 * The loop a Node user would write by hand: fs.promises FileHandle reads and writes of Buffers with
 * `queueDepth` requests in flight. Node cannot open a file with O_DIRECT, so this goes through the
 * page cache (and libuv's thread pool, UV_THREADPOOL_SIZE threads, 4 by default).
 */
import { randomFillSync } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';

import type { Op } from './fio.js';

export interface NodeLoopSpec {
  op: Op;
  blockSize: number;
  queueDepth: number;
  /** Block indices in the order to visit them. */
  order: Uint32Array;
}

export interface LoopResult {
  bytes: number;
  seconds: number;
  gbps: number;
}

/** Opens the peer's file the ordinary way (buffered), creating it empty when asked. */
export function openNodeFile(path: string, create = false): Promise<FileHandle> {
  return open(path, create ? 'w+' : 'r+');
}

/** One timed pass over `order`. Writes are not synced inside the timing, as a Node user's are not. */
export async function runNodeLoop(fh: FileHandle, spec: NodeLoopSpec): Promise<LoopResult> {
  const { op, blockSize, queueDepth, order } = spec;
  const workers = Math.max(1, Math.min(queueDepth, order.length));
  const buffers = Array.from({ length: workers }, () =>
    randomFillSync(Buffer.allocUnsafe(blockSize)),
  );
  let next = 0;
  let bytes = 0;
  const worker = async (buf: Buffer): Promise<void> => {
    while (next < order.length) {
      const position = (order[next++] as number) * blockSize;
      const moved =
        op === 'read'
          ? (await fh.read(buf, 0, blockSize, position)).bytesRead
          : (await fh.write(buf, 0, blockSize, position)).bytesWritten;
      bytes += moved;
    }
  };
  const start = process.hrtime.bigint();
  await Promise.all(buffers.map(worker));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  return { bytes, seconds, gbps: bytes / seconds / 1e9 };
}
