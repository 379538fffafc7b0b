/**
 * GpuTier: fixed-size slots in GPU memory, above the host tier. Either a pool kvtier allocates and
 * frees, or GPU memory the caller hands over (a DeviceRegion it allocated, wrapped or imported by
 * CUDA IPC from an engine), which kvtier indexes and fills but never frees.
 */
import { KvtierError } from '../errors.js';
import { DeviceRegion } from '../gpu/device-region.js';
import type { SlotPlace, Tier } from './tier.js';

export class GpuTier implements Tier {
  readonly kind = 'gpu';
  readonly durable = false;

  private constructor(
    readonly name: string,
    readonly slots: number,
    readonly slotBytes: number,
    readonly region: DeviceRegion,
    private readonly owned: boolean,
  ) {}

  /** A pool of `slots` blocks allocated on `device`, freed when the tier closes. */
  static allocate(name: string, slots: number, slotBytes: number, device: number): GpuTier {
    if (!Number.isSafeInteger(slots) || slots < 1) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `GPU tier ${name} needs at least one block of capacity`,
      );
    }
    return new GpuTier(
      name,
      slots,
      slotBytes,
      DeviceRegion.allocate(slots * slotBytes, { device }),
      true,
    );
  }

  /** Slots laid over memory the caller owns; as many whole blocks as fit (or `slots`). */
  static over(name: string, region: DeviceRegion, slotBytes: number, slots?: number): GpuTier {
    if (!(region instanceof DeviceRegion)) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `GPU tier ${name}: region must be a DeviceRegion`,
      );
    }
    region.assertOpen();
    const fit = Math.floor(region.byteLength / slotBytes);
    const n = slots ?? fit;
    if (!Number.isSafeInteger(n) || n < 1 || n > fit) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `GPU tier ${name}: ${String(slots ?? fit)} blocks of ${slotBytes} bytes do not fit a region of ${region.byteLength} bytes`,
      );
    }
    return new GpuTier(name, n, slotBytes, region, false);
  }

  place(slot: number): SlotPlace {
    return { kind: 'memory', target: this.region, offset: slot * this.slotBytes };
  }

  close(): Promise<void> {
    return this.owned ? this.region.close() : Promise.resolve();
  }
}
