/**
 * Decoding KV blocks on their way into GPU memory (docs/codecs.md, "On a GPU"): encoded blocks in
 * pinned host memory cross PCIe in their small form, one DMA copy into the copy engine's HBM
 * staging, and a kernel decodes them there into the destination. The kernels compute every value
 * with the CPU decoder's operations and roundings (native/gpu/codec_decode.h, compiled for both),
 * so a block decodes to the same bytes on the GPU as on any CPU.
 */
import type { BlockCodec } from '../codec.js';
import { KvtierError } from '../errors.js';
import { native } from '../native.js';
import { Region } from '../region.js';
import { describe } from '../validate.js';

import { DeviceRegion } from './device-region.js';
import { GpuCopyEngine } from './engines.js';

function bad(message: string): never {
  throw new KvtierError('KVTIER_BAD_ARGUMENT', message);
}

function count(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    bad(`${name} must be a non-negative integer, got ${describe(value)}`);
  }
  return value;
}

export class GpuCodec {
  private constructor(
    private readonly engine: GpuCopyEngine,
    readonly codec: BlockCodec,
  ) {}

  /**
   * Why blocks cannot be decoded on this engine's GPU ('' when they can): not a GPU copy engine,
   * or the driver did not load the decode kernels.
   */
  static unavailable(engine: unknown): string {
    if (!(engine instanceof GpuCopyEngine)) return 'not a GPU copy engine';
    return engine.decodePath;
  }

  /** A decoder on `engine`'s device and streams; KVTIER_NOT_AVAILABLE when it has none. */
  static open(engine: GpuCopyEngine, codec: BlockCodec): GpuCodec {
    const why = GpuCodec.unavailable(engine);
    if (why !== '') throw new KvtierError('KVTIER_NOT_AVAILABLE', `no GPU decode: ${why}`);
    return new GpuCodec(engine, codec);
  }

  /**
   * Decodes `blocks` consecutive encoded blocks (`codec.encodedBytes` each) of `src` from
   * `srcOffset` into `dst` from `dstOffset` (`codec.decodedBytes` each, aligned to the dtype).
   * `src` must be pinned. Refused with KVTIER_BAD_ARGUMENT before anything reaches the GPU, `dst`
   * untouched, where the CPU decoder refuses: any block's header not this codec's. Neither buffer
   * may be touched until the promise settles.
   */
  async decodeToDevice(
    src: Region,
    srcOffset: number,
    dst: DeviceRegion,
    dstOffset: number,
    blocks = 1,
  ): Promise<void> {
    if (!(src instanceof Region)) bad(`src must be a Region, got ${describe(src)}`);
    if (!(dst instanceof DeviceRegion)) bad(`dst must be a DeviceRegion, got ${describe(dst)}`);
    await this.engine.decode(
      this.codec.params,
      src.native,
      count(srcOffset, 'srcOffset'),
      dst.native,
      count(dstOffset, 'dstOffset'),
      count(blocks, 'blocks'),
    );
  }
}

/**
 * @internal The GPU kernels' arithmetic, run on the CPU: what the tests compare with the CPU
 * decoder where no GPU is present. Refuses what `codec.decode` refuses.
 */
export function decodeLikeGpu(
  codec: BlockCodec,
  src: Uint8Array,
  dst: Uint8Array,
  blocks = 1,
): void {
  native().gpuCodecReference(codec.params, src, dst, blocks);
}
