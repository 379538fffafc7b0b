/**
 * GPU pools: an engine's KV tensors shared by CUDA IPC handle, one per tensor of the layout's
 * form. Each is imported as a DeviceRegion; the copy plan then needs one address space, so the
 * layout's relative offsets are turned into offsets from the lowest imported address, and the
 * pool target is a borrowed DeviceRegion spanning all of them (copies touch only the planned
 * pieces, which lie inside the imported tensors).
 */
import { KvtierError } from '../core/errors.js';
import { DeviceRegion } from '../core/gpu/device-region.js';
import type { KvLayoutSpec, KvTensorRef } from '../layout/index.js';
import { kvDims, kvDtypeBytes } from '../layout/index.js';
import { native } from '../core/native.js';
import type { PoolMemory } from './pools.js';

export interface CudaIpcSpec {
  kind: 'cuda-ipc';
  device: number;
  handles: Uint8Array[];
  bytes: number[];
}

function bad(message: string): never {
  throw new KvtierError('KVTIER_BAD_ARGUMENT', message);
}

export function checkCudaIpc(memory: Record<string, unknown>): CudaIpcSpec {
  const { device, handles, bytes } = memory;
  if (typeof device !== 'number' || !Number.isSafeInteger(device) || device < 0) {
    bad(`memory.device must be a CUDA ordinal, got ${JSON.stringify(device)}`);
  }
  if (!Array.isArray(handles) || handles.length === 0) bad('memory.handles must list handles');
  if (!Array.isArray(bytes) || bytes.length !== handles.length) {
    bad('memory.bytes must list one size per handle');
  }
  const raw = handles.map((h: unknown, i) => {
    if (typeof h !== 'string' || !/^[0-9a-fA-F]{128}$/.test(h)) {
      bad(`memory.handles[${i}] must be 128 hex digits (a 64-byte cudaIpcMemHandle)`);
    }
    return Uint8Array.from(Buffer.from(h, 'hex'));
  });
  const sizes = bytes.map((b: unknown, i) => {
    if (typeof b !== 'number' || !Number.isSafeInteger(b) || b <= 0) {
      bad(`memory.bytes[${i}] must be a positive integer`);
    }
    return b;
  });
  return { kind: 'cuda-ipc', device, handles: raw, bytes: sizes };
}

/** The tensors of a spec in the order the handles come, with their shapes (sizes). */
function tensorsOf(spec: KvLayoutSpec): { ref: KvTensorRef; sizes: number[] }[] {
  const inner = [spec.blockTokens, spec.kvHeads, spec.headDim];
  switch (spec.form) {
    case 'separate':
      return spec.layers.flatMap((l) => [
        { ref: l.k, sizes: [spec.numBlocks, ...inner] },
        { ref: l.v, sizes: [spec.numBlocks, ...inner] },
      ]);
    case 'kv-first':
      return spec.layers.map((ref) => ({ ref, sizes: [2, spec.numBlocks, ...inner] }));
    case 'block-first':
      return spec.layers.map((ref) => ({ ref, sizes: [spec.numBlocks, 2, ...inner] }));
    case 'stacked': {
      const size = {
        layer: spec.numLayers,
        kv: 2,
        block: spec.numBlocks,
        token: spec.blockTokens,
        head: spec.kvHeads,
        dim: spec.headDim,
      };
      return [{ ref: spec.tensor, sizes: (spec.order ?? kvDims).map((d) => size[d]) }];
    }
  }
}

/** Bytes from a tensor's element 0 past its last element. */
function spanBytes(ref: KvTensorRef, sizes: number[], eb: number): number {
  let strides = ref.strides;
  if (strides === undefined) {
    const s = new Array<number>(sizes.length);
    let acc = 1;
    for (let i = sizes.length - 1; i >= 0; i--) {
      s[i] = acc;
      acc *= sizes[i]!;
    }
    strides = s;
  }
  let span = 1;
  for (let i = 0; i < sizes.length; i++) span += (strides[i] ?? 0) * (sizes[i]! - 1);
  return span * eb;
}

/**
 * Imports the tensors and returns the memory plus the spec with offsets from the lowest imported
 * address (what describeKvLayout and the copy plan then take).
 */
export function openGpuMemory(
  spec: KvLayoutSpec,
  ipc: CudaIpcSpec,
): { memory: PoolMemory; absolute: KvLayoutSpec } {
  const tensors = tensorsOf(spec);
  if (tensors.length !== ipc.handles.length) {
    bad(
      `the '${spec.form}' layout has ${tensors.length} tensors but ${ipc.handles.length} handles came`,
    );
  }
  const eb = kvDtypeBytes[spec.dtype];
  tensors.forEach((t, i) => {
    const end = (t.ref.offset ?? 0) + spanBytes(t.ref, t.sizes, eb);
    if (end > ipc.bytes[i]!) {
      bad(`tensor ${i} reaches byte ${end} but its memory holds ${ipc.bytes[i]} bytes`);
    }
  });
  const cuda = native().probe().cuda;
  if (!cuda.available || cuda.devices.length === 0) {
    throw new KvtierError(
      'KVTIER_NOT_AVAILABLE',
      `GPU pools need a CUDA device: ${cuda.reason ?? 'none was found'}`,
    );
  }
  const imported: DeviceRegion[] = [];
  const closeAll = async (): Promise<void> => {
    await Promise.all(imported.map((r) => r.close()));
  };
  try {
    for (let i = 0; i < ipc.handles.length; i++) {
      imported.push(
        DeviceRegion.import(ipc.handles[i]!, { device: ipc.device, bytes: ipc.bytes[i]! }),
      );
    }
  } catch (e) {
    void closeAll();
    throw e;
  }
  const base = imported.reduce((m, r) => (r.pointer < m ? r.pointer : m), imported[0]!.pointer);
  const top = imported.reduce(
    (m, r) => (r.pointer + BigInt(r.byteLength) > m ? r.pointer + BigInt(r.byteLength) : m),
    0n,
  );
  const at = (i: number, ref: KvTensorRef): KvTensorRef => ({
    ...ref,
    offset: Number(imported[i]!.pointer - base) + ref.offset,
  });
  let absolute: KvLayoutSpec;
  switch (spec.form) {
    case 'separate':
      absolute = {
        ...spec,
        layers: spec.layers.map((l, i) => ({ k: at(2 * i, l.k), v: at(2 * i + 1, l.v) })),
      };
      break;
    case 'kv-first':
    case 'block-first':
      absolute = { ...spec, layers: spec.layers.map((ref, i) => at(i, ref)) };
      break;
    case 'stacked':
      absolute = { ...spec, tensor: at(0, spec.tensor) };
      break;
  }
  const span = DeviceRegion.wrap(base, Number(top - base), { device: ipc.device });
  return {
    absolute,
    memory: {
      kind: 'cuda-ipc',
      target: span,
      identities: ipc.handles.map((h) => `ipc:${Buffer.from(h).toString('hex')}`),
      close: async () => {
        await span.close();
        await closeAll();
      },
    },
  };
}
