/**
 * Staging buffers: host Regions of one batch each, reused across requests so a save or load
 * costs no allocation. Pinned ones (for GPU pools) are kept apart from plain ones.
 */
import { Region } from '../core/region.js';

export class Staging {
  private readonly free: { plain: Region[]; pinned: Region[] } = { plain: [], pinned: [] };
  private closed = false;

  constructor(
    readonly bytes: number,
    private readonly keep = 8,
  ) {}

  /** Runs `op` with a staging Region of `bytes` bytes, then returns it to the pool. */
  async with<T>(pinned: boolean, op: (region: Region) => Promise<T>): Promise<T> {
    const list = pinned ? this.free.pinned : this.free.plain;
    const region = list.pop() ?? Region.allocate(this.bytes, { pin: pinned ? true : false });
    try {
      return await op(region);
    } finally {
      if (this.closed || list.length >= this.keep) void region.close();
      else list.push(region);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.free.plain, ...this.free.pinned];
    this.free.plain = [];
    this.free.pinned = [];
    await Promise.all(all.map((r) => r.close()));
  }
}
