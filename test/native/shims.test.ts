/**
 * The runtime loaders' failure and success paths, driven by stub libraries compiled here and put
 * first on the loader path of a child process: no GPU, cuFile or RDMA NIC is needed to check that
 * kvtier reports what it found and why.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { probe } from '../../lib/core/probe.js';
import { prerequisite, tempDir } from '../helpers.js';

const dist = fileURLToPath(new URL('../../dist/index.js', import.meta.url));
const dir = tempDir('kvtier-shims-');
afterAll(() => dir.remove());

const CUDA_STUB = String.raw`
#include <string.h>
typedef int CUresult;
#ifndef DEVICES
#define DEVICES 0
#endif
CUresult cuInit(unsigned f) { (void)f; return DEVICES ? 0 : 100; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return 0; }
CUresult cuDeviceGetCount(int* c) { *c = DEVICES; return 0; }
CUresult cuDeviceGet(int* d, int i) { *d = i; return 0; }
CUresult cuDeviceGetName(char* n, int len, int d) { (void)d; strncpy(n, "kvtier stub GPU", len); return 0; }
CUresult cuDeviceTotalMem_v2(unsigned long* b, int d) { (void)d; *b = 80ul << 30; return 0; }
CUresult cuDeviceGetAttribute(int* v, int a, int d) { (void)d; *v = a == 75 ? 9 : 0; return 0; }
CUresult cuDevicePrimaryCtxRetain(void** c, int d) { (void)d; *c = (void*)0x1; return 0; }
CUresult cuCtxSetCurrent(void* c) { (void)c; return 0; }
#ifndef OMIT_REGISTER
CUresult cuMemHostRegister_v2(void* p, unsigned long n, unsigned f) { (void)p; (void)n; (void)f; return 0; }
#endif
CUresult cuMemHostUnregister(void* p) { (void)p; return 0; }
CUresult cuGetErrorName(CUresult e, const char** s) { *s = e == 100 ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_UNKNOWN"; return 0; }
CUresult cuGetErrorString(CUresult e, const char** s) { (void)e; *s = "no CUDA-capable device is detected"; return 0; }
`;

const CUFILE_STUB = String.raw`
int cuFileDriverOpen(void) { return 0; }
int cuFileDriverClose_v2(void) { return 0; }
int cuFileHandleRegister(void* h, void* d) { (void)h; (void)d; return 0; }
void cuFileHandleDeregister(void* h) { (void)h; }
int cuFileBufRegister(const void* p, unsigned long n, int f) { (void)p; (void)n; (void)f; return 0; }
int cuFileBufDeregister(const void* p) { (void)p; return 0; }
long cuFileRead(void* h, void* p, unsigned long n, long o, long d) { (void)h; (void)p; (void)o; (void)d; return (long)n; }
long cuFileWrite(void* h, const void* p, unsigned long n, long o, long d) { (void)h; (void)p; (void)o; (void)d; return (long)n; }
int cuFileGetVersion(int* v) { *v = 1140; return 0; }
`;

let compiler: string | undefined;

function build(name: string, source: string, soname: string, defines: string[] = []): string {
  const at = join(dir.path, name);
  mkdirSync(at, { recursive: true });
  const src = join(at, 'stub.c');
  writeFileSync(src, source);
  const out = join(at, soname);
  execFileSync(compiler!, ['-shared', '-fPIC', '-O0', ...defines.map((d) => `-D${d}`), src, '-o', out]);
  return at;
}

/** Runs a script against the built package in a child whose loader path starts at `libDir`. */
function child(script: string, env: Record<string, string>): unknown {
  const r = spawnSync(
    process.execPath,
    ['--input-type=module', '-e', `import * as kv from ${JSON.stringify(dist)};\n${script}`],
    { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 30_000 },
  );
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const report = 'process.stdout.write(JSON.stringify(kv.probe()));';

// On a GPU host the real driver sits in the default library path, where a child cannot be made
// to miss it: the missing-driver paths are checked on machines without one (CI).
const realDriver = probe().cuda.path ?? '';
const noDriverHere = (): boolean =>
  prerequisite(realDriver === '', `a CUDA driver is installed (${realDriver}); cannot simulate its absence`, 'hardware');

beforeAll(() => {
  for (const cc of ['cc', 'gcc']) {
    if (spawnSync(cc, ['--version']).status === 0) {
      compiler = cc;
      break;
    }
  }
});

describe('runtime loaders', () => {
  it('report a missing CUDA driver, cuFile and a bad KVTIER_CUFILE_PATH with reasons', () => {
    if (!noDriverHere()) return;
    const r = child(report, { LD_LIBRARY_PATH: '', KVTIER_CUFILE_PATH: '/nonexistent/kvtier' }) as {
      cuda: { available: boolean; loaded: boolean; reason: string };
      cufile: { available: boolean; reason: string };
    };
    expect(r.cuda.available).toBe(false);
    expect(r.cuda.reason).toMatch(/libcuda/);
    expect(r.cufile.available).toBe(false);
    expect(r.cufile.reason).toMatch(/KVTIER_CUFILE_PATH=\/nonexistent\/kvtier/);
  });

  it('report a driver with no device, and refuse pinned memory then', () => {
    if (!prerequisite(compiler !== undefined, 'no C compiler (cc) to build stub libraries')) return;
    const lib = build('nodevice', CUDA_STUB, 'libcuda.so.1');
    const r = child(
      `const p = kv.probe().cuda; let code; try { kv.Region.allocate(4096, { pin: true }); } catch (e) { code = e.code; }
       process.stdout.write(JSON.stringify({ p, code }));`,
      { LD_LIBRARY_PATH: lib },
    ) as { p: { available: boolean; loaded: boolean; version: string; reason: string }; code: string };
    expect(r.p.available).toBe(false);
    expect(r.p.version).toBe('13.0');
    expect(r.p.reason).toMatch(/cuInit failed: CUDA_ERROR_NO_DEVICE/);
    expect(r.code).toBe('KVTIER_NOT_AVAILABLE');
  });

  it('report a driver missing a symbol kvtier needs', () => {
    if (!prerequisite(compiler !== undefined, 'no C compiler (cc) to build stub libraries')) return;
    const lib = build('nosym', CUDA_STUB, 'libcuda.so.1', ['OMIT_REGISTER', 'DEVICES=1']);
    const r = child(report, { LD_LIBRARY_PATH: lib }) as { cuda: { available: boolean; reason: string } };
    expect(r.cuda.available).toBe(false);
    expect(r.cuda.reason).toMatch(/cuMemHostRegister_v2/);
  });

  it('list devices and pin host regions through a working driver', () => {
    if (!prerequisite(compiler !== undefined, 'no C compiler (cc) to build stub libraries')) return;
    const lib = build('onedevice', CUDA_STUB, 'libcuda.so.1', ['DEVICES=1']);
    const r = child(
      `const p = kv.probe().cuda; const region = kv.Region.allocate(1 << 20, { pin: true });
       const out = { p, pinned: region.pinned }; await region.close();
       process.stdout.write(JSON.stringify(out));`,
      { LD_LIBRARY_PATH: lib },
    ) as {
      p: { available: boolean; devices: { name: string; memoryBytes: number; computeCapability: string }[] };
      pinned: boolean;
    };
    expect(r.p.available).toBe(true);
    expect(r.p.devices).toHaveLength(1);
    expect(r.p.devices[0]).toMatchObject({ name: 'kvtier stub GPU', memoryBytes: 80 * 2 ** 30 });
    expect(r.p.devices[0]!.computeCapability).toMatch(/^9\./);
    expect(r.pinned).toBe(true);
  });

  const gpuCalls = `const codes = {}; const why = {};
    const attempt = (name, f) => { try { f(); codes[name] = 'ok'; } catch (e) { codes[name] = e.code; why[name] = e.message; } };
    attempt('deviceRegion', () => kv.DeviceRegion.allocate(4096));
    attempt('copyEngine', () => kv.createCopyEngine());
    attempt('posixFile', () => kv.createGpuFileEngine({ io: 'posix' }));
    attempt('cufile', () => kv.createGpuFileEngine({ io: 'cufile' }));
    attempt('auto', () => kv.createGpuFileEngine({ io: 'auto' }));
    process.stdout.write(JSON.stringify({ codes, why }));`;
  type GpuReport = { codes: Record<string, string>; why: Record<string, string> };

  it('refuse every GPU object with KVTIER_NOT_AVAILABLE without a CUDA driver', () => {
    if (!noDriverHere()) return;
    const r = child(gpuCalls, { LD_LIBRARY_PATH: '', KVTIER_CUFILE_PATH: '/nonexistent' }) as GpuReport;
    for (const name of ['deviceRegion', 'copyEngine', 'posixFile', 'cufile', 'auto']) {
      expect(r.codes[name], name).toBe('KVTIER_NOT_AVAILABLE');
    }
    expect(r.why.deviceRegion).toMatch(/libcuda/);
    expect(r.why.cufile).toMatch(/KVTIER_CUFILE_PATH|cuFile|CUDA/);
  });

  it('name the entry point an old driver lacks, and the missing device', () => {
    if (!prerequisite(compiler !== undefined, 'no C compiler (cc) to build stub libraries')) return;
    // The stub has what probing needs and none of the GPU data path: an "old driver".
    const old = child(gpuCalls, { LD_LIBRARY_PATH: build('old', CUDA_STUB, 'libcuda.so.1', ['DEVICES=1']) }) as GpuReport;
    expect(old.codes.deviceRegion).toBe('KVTIER_NOT_AVAILABLE');
    expect(old.why.deviceRegion).toMatch(/lacks cuMemAlloc_v2.*newer NVIDIA driver/);
    expect(old.codes.copyEngine).toBe('KVTIER_NOT_AVAILABLE');
    const none = child(gpuCalls, { LD_LIBRARY_PATH: build('none', CUDA_STUB, 'libcuda.so.1') }) as GpuReport;
    expect(none.codes.deviceRegion).toBe('KVTIER_NOT_AVAILABLE');
    expect(none.why.deviceRegion).toMatch(/CUDA_ERROR_NO_DEVICE/);
  });

  it('load cuFile from KVTIER_CUFILE_PATH and report compat mode without nvidia-fs', () => {
    if (!prerequisite(compiler !== undefined, 'no C compiler (cc) to build stub libraries')) return;
    const lib = build('cufile', CUFILE_STUB, 'libcufile.so.0');
    const r = child(report, { KVTIER_CUFILE_PATH: lib }) as {
      cufile: { available: boolean; version: string; mode: string; modeReason: string };
    };
    expect(r.cufile.available).toBe(true);
    expect(r.cufile.version).toBe('1.14.0');
    // A machine with the nvidia-fs kernel module runs real GPUDirect Storage.
    const gds = existsSync('/sys/module/nvidia_fs') || existsSync('/proc/driver/nvidia-fs/version');
    expect(r.cufile.mode).toBe(gds ? 'gds' : 'compat');
    if (!gds) expect(r.cufile.modeReason).toMatch(/nvidia-fs/);
  });
});
