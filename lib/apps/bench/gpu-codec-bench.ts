/**
 * `kvtier bench gpu`'s decode rows: encoded KV blocks in pinned host memory decoded into GPU
 * memory (GpuCodec: the encoded bytes cross PCIe, a kernel decodes them in HBM), next to a plain
 * host-to-device copy of the decoded bytes, the issue's yardstick (target: ≥ 0.8×). Llama-3-8B
 * shaped bf16 blocks of synthetic KV; every figure's bytes checked against the CPU decoder.
 */
import {
  DeviceRegion,
  type GpuCopyEngine,
  KvtierError,
  Region,
  TransferBatch,
} from '../../index.js';
import { BlockCodec, type CodecSpec, GpuCodec } from '../../internal.js';
import { syntheticKv, toBytes } from './kv-values.js';
import { median } from './stats.js';

/** What the rows need of the GPU bench's options and row type (gpu-bench.ts). */
export interface DecodeBenchOptions {
  trials: number;
  bytesPerTrial: number;
  onProgress?: (message: string) => void;
}
export interface DecodeBenchRow {
  op: string;
  size: number;
  gbps: number;
  peer: string | null;
  peerGbps: number | null;
  ratio: number | null;
}

const SHAPE = { layers: 32, tokens: 16, heads: 8, dim: 128 }; // 2 MiB a block in bf16
const LAYOUT = { dtype: 'bf16', numLayers: 32, blockTokens: 16, kvHeads: 8, headDim: 128 };
const BLOCKS = 32; // a call: 64 MiB decoded
export const GPU_DECODE_SPECS: CodecSpec[] = [
  { codec: 'fp8-e4m3' },
  { codec: 'int8' },
  { codec: 'int8', scales: 'token' },
  { codec: 'kivi4' },
  { codec: 'kivi2' },
];

async function medianSeconds(trials: number, run: () => Promise<unknown>): Promise<number> {
  await run(); // warm-up: staging allocated, kernels JIT-compiled
  const times: number[] = [];
  for (let i = 0; i < trials; i++) {
    const t0 = process.hrtime.bigint();
    await run();
    times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return median(times);
}

function nameOf(spec: CodecSpec): string {
  return spec.scales ? `${spec.codec}/${spec.scales}` : spec.codec;
}

export async function gpuDecodes(
  o: DecodeBenchOptions,
  gpu: GpuCopyEngine,
  rows: DecodeBenchRow[],
  notes: string[],
): Promise<void> {
  if (gpu.decodePath !== '') {
    notes.push(`GPU decode not measured: ${gpu.decodePath}`);
    return;
  }
  const decoded = Region.allocate(BLOCKS * 2 * 2 ** 20, { pin: true });
  const dev = DeviceRegion.allocate(decoded.byteLength);
  const back = Region.allocate(decoded.byteLength, { pin: true });
  try {
    const x = toBytes(syntheticKv(SHAPE, BLOCKS, 17), 'bf16');
    const bytes = decoded.byteLength;
    const reps = Math.max(2, Math.floor(o.bytesPerTrial / bytes));
    const plain = new TransferBatch();
    for (let i = 0; i < reps; i++) plain.copy(dev, 0, decoded, 0, bytes);
    for (const spec of GPU_DECODE_SPECS) {
      o.onProgress?.(`GPU decode, ${nameOf(spec)}`);
      const codec = BlockCodec.open(spec, LAYOUT);
      const enc = Region.allocate(codec.encodedBytes * BLOCKS, { pin: true });
      try {
        codec.encode(x, enc.view(), BLOCKS);
        codec.decode(enc.view(), decoded.view(), BLOCKS); // what the GPU must produce
        // The yardstick: the decoded bytes copied up as they are, interleaved with the decodes.
        const copySecs = await medianSeconds(o.trials, async () =>
          (await gpu.submit(plain)).throwIfFailed(),
        );
        const decoder = GpuCodec.open(gpu, codec);
        back.view().fill(0);
        const secs = await medianSeconds(o.trials, () =>
          Promise.all(
            Array.from({ length: reps }, () => decoder.decodeToDevice(enc, 0, dev, 0, BLOCKS)),
          ),
        );
        (await gpu.submit(new TransferBatch().copy(back, 0, dev, 0, bytes))).throwIfFailed();
        if (!Buffer.from(back.view()).equals(Buffer.from(decoded.view()))) {
          throw new KvtierError(
            'KVTIER_CORRUPT',
            `GPU decode of ${nameOf(spec)} differs from the CPU decoder's bytes`,
          );
        }
        const gbps = (bytes * reps) / secs / 1e9;
        const peerGbps = (bytes * reps) / copySecs / 1e9;
        rows.push({
          op: `decode ${nameOf(spec)} (${(codec.ratio * 100).toFixed(0)} % over PCIe)`,
          size: bytes,
          gbps,
          peer: 'h2d of the decoded bytes',
          peerGbps,
          ratio: gbps / peerGbps,
        });
      } finally {
        await enc.close();
      }
    }
  } finally {
    await Promise.all([decoded.close(), dev.close(), back.close()]);
  }
}
