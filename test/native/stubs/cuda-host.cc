// A libcuda.so.1 whose "GPU" is host memory, for test/native/gpu-codec-stub.test.ts: every copy
// is a memcpy, streams and events are done as soon as queued, and cuLaunchKernel runs kvtier's
// decode kernels' element function (native/gpu/codec_decode.h) over the whole grid on the CPU.
// So the copy engine's decode path (argument checks, staging, kernel parameters, completion), the
// TypeScript GpuCodec and the Warehouse's GPU decode run without a GPU. Each decode launch appends
// a line to $KVTIER_STUB_LOG.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "codec_decode.h"

using namespace kvtier::gpucodec;

namespace {
std::mutex mu;
std::map<unsigned long long, size_t> allocations;  // base -> bytes

template <unsigned C>
void Run(void** params) {
  const unsigned char* src = *static_cast<const unsigned char**>(params[0]);
  unsigned char* dst = *static_cast<unsigned char**>(params[1]);
  const Shape s = *static_cast<const Shape*>(params[2]);
  const unsigned long long blocks = *static_cast<unsigned long long*>(params[3]);
  for (unsigned long long b = 0; b < blocks; b++) {
    for (unsigned long long i = 0; i < s.elements; i++) DecodeElement<C>(s, src, dst, b, i);
  }
  if (const char* log = std::getenv("KVTIER_STUB_LOG")) {
    if (FILE* f = std::fopen(log, "a")) {
      std::fprintf(f, "decode codec=%u blocks=%llu\n", s.codec, blocks);
      std::fclose(f);
    }
  }
}
}  // namespace

extern "C" {
typedef int CUresult;
CUresult cuInit(unsigned) { return 0; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return 0; }
CUresult cuDeviceGetCount(int* c) { *c = 1; return 0; }
CUresult cuDeviceGet(int* d, int i) { *d = i; return 0; }
CUresult cuDeviceGetName(char* n, int len, int) { strncpy(n, "kvtier host stub GPU", len); return 0; }
CUresult cuDeviceTotalMem_v2(size_t* b, int) { *b = size_t{80} << 30; return 0; }
CUresult cuDeviceGetAttribute(int* v, int a, int) { *v = a == 75 ? 9 : 0; return 0; }
CUresult cuDevicePrimaryCtxRetain(void** c, int) { *c = (void*)0x1; return 0; }
CUresult cuCtxSetCurrent(void*) { return 0; }
CUresult cuMemHostRegister_v2(void*, size_t, unsigned) { return 0; }
CUresult cuMemHostUnregister(void*) { return 0; }
CUresult cuGetErrorName(CUresult, const char** s) { *s = "CUDA_ERROR_STUB"; return 0; }
CUresult cuGetErrorString(CUresult, const char** s) { *s = "refused by the host stub"; return 0; }

CUresult cuMemAlloc_v2(unsigned long long* p, size_t n) {
  void* m = std::aligned_alloc(256, (n + 255) / 256 * 256);
  if (m == nullptr) return 2;
  std::lock_guard<std::mutex> lock(mu);
  *p = reinterpret_cast<unsigned long long>(m);
  allocations[*p] = n;
  return 0;
}
CUresult cuMemFree_v2(unsigned long long p) {
  std::lock_guard<std::mutex> lock(mu);
  allocations.erase(p);
  std::free(reinterpret_cast<void*>(p));
  return 0;
}
CUresult cuMemGetAddressRange_v2(unsigned long long* base, size_t* bytes, unsigned long long p) {
  std::lock_guard<std::mutex> lock(mu);
  auto it = allocations.upper_bound(p);
  if (it == allocations.begin()) return 1;
  --it;
  if (p >= it->first + it->second) return 1;
  *base = it->first;
  *bytes = it->second;
  return 0;
}
CUresult cuMemHostAlloc(void** p, size_t n, unsigned) {
  *p = std::aligned_alloc(4096, (n + 4095) / 4096 * 4096);
  return *p == nullptr ? 2 : 0;
}
CUresult cuMemFreeHost(void* p) { std::free(p); return 0; }
CUresult cuMemHostGetDevicePointer_v2(unsigned long long* d, void* p, unsigned) {
  *d = reinterpret_cast<unsigned long long>(p);
  return 0;
}
CUresult cuMemcpyAsync(unsigned long long dst, unsigned long long src, size_t n, void*) {
  std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<void*>(src), n);
  return 0;
}
CUresult cuStreamCreate(void** s, unsigned) { *s = std::malloc(1); return 0; }
CUresult cuStreamDestroy_v2(void* s) { std::free(s); return 0; }
CUresult cuStreamSynchronize(void*) { return 0; }
CUresult cuEventCreate(void** e, unsigned) { *e = std::malloc(1); return 0; }
CUresult cuEventRecord(void*, void*) { return 0; }
CUresult cuEventSynchronize(void*) { return 0; }
CUresult cuEventDestroy_v2(void* e) { std::free(e); return 0; }
CUresult cuIpcGetMemHandle(void*, unsigned long long) { return 801; }
CUresult cuIpcOpenMemHandle_v2(unsigned long long*, const char*, unsigned) { return 801; }
CUresult cuIpcCloseMemHandle(unsigned long long) { return 801; }

CUresult cuModuleLoadData(void** m, const void* image) {
  // kvtier hands over its embedded PTX: it must name the entries the stub stands in for.
  const char* ptx = static_cast<const char*>(image);
  if (strstr(ptx, ".entry kvtier_decode_fp8(") == nullptr) return 218;  // INVALID_PTX
  *m = (void*)0x2;
  return 0;
}
CUresult cuModuleUnload(void*) { return 0; }
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
  static const char* const kNames[] = {"kvtier_decode_fp8", "kvtier_decode_int8",
                                       "kvtier_decode_kivi"};
  for (long i = 0; i < 3; i++) {
    if (strcmp(name, kNames[i]) == 0) {
      *f = reinterpret_cast<void*>(i + 1);
      return 0;
    }
  }
  return 500;  // NOT_FOUND: the segment-copy kernel is not emulated; copies take the DMA path
}

CUresult cuLaunchKernel(void* f, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                        unsigned, void*, void** params, void**) {
  switch (reinterpret_cast<long>(f)) {
    case 1: Run<kFp8>(params); return 0;
    case 2: Run<kInt8>(params); return 0;
    case 3: Run<kKivi2>(params); return 0;
    default: return 400;  // INVALID_HANDLE
  }
}
}
