import { Region } from '../../core/region.js';

/** Send regions are reused by size: allocating and zeroing a fresh one per get would dominate. */
export class RegionPool {
  private readonly free = new Map<number, Region[]>();
  private bytes = 0;

  constructor(private readonly limit: number) {}

  take(bytes: number): Region {
    const r = this.free.get(bytes)?.pop();
    if (r) {
      this.bytes -= bytes;
      return r;
    }
    return Region.allocate(bytes, { pin: false });
  }

  give(r: Region): void {
    if (r.closed) return;
    if (this.bytes + r.byteLength > this.limit) {
      void r.close();
      return;
    }
    this.bytes += r.byteLength;
    const list = this.free.get(r.byteLength) ?? [];
    list.push(r);
    this.free.set(r.byteLength, list);
  }

  async close(): Promise<void> {
    const all = [...this.free.values()].flat();
    this.free.clear();
    this.bytes = 0;
    await Promise.all(all.map((r) => r.close()));
  }
}
