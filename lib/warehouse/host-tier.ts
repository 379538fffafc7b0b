/** HostTier: fixed-size slots in one large region, pinned when a CUDA device allows it. */
import { KvtierError } from '../core/errors.js';
import { Region } from '../core/region.js';
import type { SlotPlace, Tier } from './tier.js';

export class HostTier implements Tier {
  readonly kind = 'host';
  readonly durable = false;
  readonly region: Region;

  constructor(
    readonly name: string,
    readonly slots: number,
    readonly slotBytes: number,
  ) {
    if (!Number.isSafeInteger(slots) || slots < 1) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `host tier ${name} needs at least one block of capacity`,
      );
    }
    this.region = Region.allocate(slots * slotBytes, { pin: 'auto' });
  }

  place(slot: number): SlotPlace {
    return { kind: 'memory', target: this.region, offset: slot * this.slotBytes };
  }

  close(): Promise<void> {
    return this.region.close();
  }
}
