/** What this machine offers kvtier, as `kvtier info` reports it. */
import { tmpdir } from 'node:os';

import { addonPath, isPrebuilt, localBuildReason, native, type NativeProbe } from './native.js';
import { version } from './version.js';

interface Capability {
  available: boolean;
  /** Present whenever `available` is false. */
  reason?: string;
}

export interface ProbeReport {
  version: string;
  addon: Capability & {
    version?: string;
    path?: string;
    prebuilt?: boolean;
    /** Why a local build is in use instead of a prebuilt binary. */
    localBuildReason?: string;
  };
  platform: { node: string; arch: string; cpus: number; pageSize: number | null };
  ioUring: Capability & { compiled?: boolean; liburingVersion?: string };
  oDirect: Capability & { dir: string; memAlign?: number; offsetAlign?: number };
  cuda: Capability & Partial<Omit<NativeProbe['cuda'], 'available' | 'reason'>>;
  cufile: Capability & Partial<Omit<NativeProbe['cufile'], 'available' | 'reason'>>;
  ibverbs: Capability & Partial<Omit<NativeProbe['ibverbs'], 'available' | 'reason'>>;
  /** How a GPU file engine with io: 'auto' moves files to and from GPU memory here. */
  gpuFile: GpuFilePath;
}

export interface GpuFilePath {
  io: 'cufile' | 'posix';
  /** For cuFile: 'gds' with the nvidia-fs kernel module, 'compat' without it. */
  cufileMode?: string;
  reason: string;
}

/** What io: 'auto' picks, from what the loaders found. */
export function gpuFilePathOf(cuda: Capability, cufile: ProbeReport['cufile']): GpuFilePath {
  if (!cuda.available) return { io: 'posix', reason: `no usable CUDA: ${cuda.reason ?? ''}` };
  if (!cufile.available) {
    return {
      io: 'posix',
      reason: `cuFile is not available (${cufile.reason ?? 'unknown'}); using pinned bounce buffers`,
    };
  }
  return {
    io: 'cufile',
    ...(cufile.mode === undefined ? {} : { cufileMode: cufile.mode }),
    reason: `cuFile ${cufile.version ?? ''} in ${cufile.mode ?? '?'} mode: ${cufile.modeReason ?? ''}`,
  };
}

export function probe(options: { dir?: string } = {}): ProbeReport {
  const dir = options.dir ?? tmpdir();
  let raw: NativeProbe;
  try {
    raw = native().probe();
  } catch (e) {
    const reason = (e as Error).message;
    const missing = { available: false, reason: `unknown: ${reason}` };
    return {
      version,
      addon: { available: false, reason },
      platform: { node: process.version, arch: process.arch, cpus: 0, pageSize: null },
      ioUring: missing,
      oDirect: { ...missing, dir },
      cuda: missing,
      cufile: missing,
      ibverbs: missing,
      gpuFile: { io: 'posix', reason: `unknown: ${reason}` },
    };
  }
  const { addonVersion, cpus, pageSize, ioUring, cuda, cufile, ibverbs } = raw;
  const direct = native().probeDirect(dir);
  return {
    version,
    addon: {
      available: true,
      version: addonVersion,
      ...(addonPath ? { path: addonPath, prebuilt: isPrebuilt(addonPath) } : {}),
      ...(localBuildReason ? { localBuildReason } : {}),
    },
    platform: { node: process.version, arch: process.arch, cpus, pageSize },
    ioUring,
    oDirect: { ...direct, dir },
    cuda,
    cufile,
    ibverbs,
    gpuFile: gpuFilePathOf(cuda, cufile),
  };
}
