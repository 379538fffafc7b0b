/**
 * GpuTier: slots in GPU memory, above the host tier. Either a pool kvtier allocates and frees, or
 * GPU memory the caller hands over (a DeviceRegion it allocated, wrapped or imported by CUDA IPC
 * from an engine), which kvtier indexes and fills but never frees. Over an engine's paged KV pool
 * (with its layout) a slot is one of the engine's own blocks, its pieces gathered on the way out
 * and scattered on the way in, so kvtier serves blocks straight from where the engine computes
 * with them.
 */
import { KvtierError } from '../core/errors.js';
import { DeviceRegion } from '../core/gpu/device-region.js';
import { planKvCopy, type KvCopyPlan } from '../layout/copy-plan.js';
import { checkBlockIndex, type KvLayout } from '../layout/kv-layout.js';
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
    /** Over an engine's pool: its copy plan, and the engine block behind each slot. */
    private readonly paged?: { plan: KvCopyPlan; blocks: readonly number[] },
  ) {}

  /**
   * Slots that are engine blocks of a paged KV pool in `region` (offsets in `layout` are bytes
   * from the region's start): `blocks` lists the engine blocks kvtier may use (default all).
   */
  static paged(
    name: string,
    region: DeviceRegion,
    layout: KvLayout,
    slotBytes: number,
    blocks?: readonly number[],
  ): GpuTier {
    const bad = (message: string): never => {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', `GPU tier ${name}: ${message}`);
    };
    if (!(region instanceof DeviceRegion)) bad('region must be a DeviceRegion');
    region.assertOpen();
    const plan = planKvCopy(layout);
    if (plan.blockBytes !== slotBytes) {
      bad(`the layout's blocks hold ${plan.blockBytes} bytes, the warehouse's ${slotBytes}`);
    }
    if (layout.extent > region.byteLength) {
      bad(`the layout reaches byte ${layout.extent} of a region of ${region.byteLength} bytes`);
    }
    const list = blocks ?? Array.from({ length: layout.numBlocks }, (_, i) => i);
    if (!Array.isArray(list) || list.length === 0)
      bad('blocks must list at least one engine block');
    list.forEach((b, i) => checkBlockIndex(layout, b, `blocks[${i}]`));
    if (new Set(list).size !== list.length) bad('blocks must not repeat');
    return new GpuTier(name, list.length, slotBytes, region, false, { plan, blocks: [...list] });
  }

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
    if (this.paged) {
      return {
        kind: 'layout',
        pool: this.region,
        plan: this.paged.plan,
        block: this.paged.blocks[slot]!,
      };
    }
    return { kind: 'memory', target: this.region, offset: slot * this.slotBytes };
  }

  close(): Promise<void> {
    return this.owned ? this.region.close() : Promise.resolve();
  }
}
