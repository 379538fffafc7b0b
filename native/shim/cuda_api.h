// The slice of the CUDA driver API that kvtier's GPU data path calls, declared from NVIDIA's public
// documentation (driver API reference, CUDA 12.x/13.x) so the addon builds without a CUDA toolkit.
// Every type here must keep the C layout the driver expects: plain structs, int-sized enums.
#pragma once
#include <cstddef>

namespace kvtier::shim::cu {

using Result = int;
using Device = int;
using DevicePtr = unsigned long long;
using Context = struct CUctx_st*;
using Stream = struct CUstream_st*;
using Event = struct CUevent_st*;
using Module = struct CUmod_st*;
using Function = struct CUfunc_st*;

constexpr Result kSuccess = 0;

// cuStreamCreate flags: kvtier's streams must not serialise with the legacy default stream that
// other libraries in the process (PyTorch) may use.
constexpr unsigned kStreamNonBlocking = 0x1;
// cuEventCreate flags: completion events are never used for timing, which makes them cheaper.
constexpr unsigned kEventDisableTiming = 0x2;
// cuIpcOpenMemHandle flags.
constexpr unsigned kIpcLazyEnablePeerAccess = 0x1;
// cuMemHostAlloc flags.
constexpr unsigned kMemHostAllocPortable = 0x1;
constexpr unsigned kMemHostAllocDeviceMap = 0x2;

// CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL.
constexpr int kPointerAttributeDeviceOrdinal = 9;

struct IpcMemHandle {
  char reserved[64];
};

struct MemLocation {
  int type;
  int id;
};

// CUmemcpyAttributes: STREAM order (1) is the ordinary async-copy contract.
constexpr int kSrcAccessOrderStream = 1;
struct MemcpyAttributes {
  int srcAccessOrder;
  MemLocation srcLocHint;
  MemLocation dstLocHint;
  unsigned flags;
};

// The entry points. Members marked optional are null when the driver predates them.
struct Api {
  Result (*memAlloc)(DevicePtr* ptr, size_t bytes) = nullptr;
  Result (*memFree)(DevicePtr ptr) = nullptr;
  Result (*memGetAddressRange)(DevicePtr* base, size_t* bytes, DevicePtr ptr) = nullptr;
  Result (*memHostAlloc)(void** ptr, size_t bytes, unsigned flags) = nullptr;
  Result (*memFreeHost)(void* ptr) = nullptr;
  Result (*memcpyAsync)(DevicePtr dst, DevicePtr src, size_t bytes, Stream stream) = nullptr;
  // Optional: CUDA 13's cuMemcpyBatchAsync_v2 (no failIdx) or CUDA 12.8's first form.
  Result (*memcpyBatchAsync)(DevicePtr* dsts, DevicePtr* srcs, size_t* sizes, size_t count,
                             MemcpyAttributes* attrs, size_t* attrIdxs, size_t numAttrs,
                             Stream stream) = nullptr;
  Result (*memcpyBatchAsync128)(DevicePtr* dsts, DevicePtr* srcs, size_t* sizes, size_t count,
                                MemcpyAttributes* attrs, size_t* attrIdxs, size_t numAttrs,
                                size_t* failIdx, Stream stream) = nullptr;
  Result (*streamCreate)(Stream* stream, unsigned flags) = nullptr;
  Result (*streamDestroy)(Stream stream) = nullptr;
  Result (*streamSynchronize)(Stream stream) = nullptr;
  Result (*eventCreate)(Event* event, unsigned flags) = nullptr;
  Result (*eventRecord)(Event event, Stream stream) = nullptr;
  Result (*eventSynchronize)(Event event) = nullptr;
  Result (*eventDestroy)(Event event) = nullptr;
  Result (*ipcGetMemHandle)(IpcMemHandle* handle, DevicePtr ptr) = nullptr;
  Result (*ipcOpenMemHandle)(DevicePtr* ptr, IpcMemHandle handle, unsigned flags) = nullptr;
  Result (*ipcCloseMemHandle)(DevicePtr ptr) = nullptr;
  // Optional: where present, wrapped pointers are checked to lie on the device named.
  Result (*pointerGetAttribute)(void* data, int attribute, DevicePtr ptr) = nullptr;
  // Optional, for the segment-copy kernel: without them copies take the DMA path only.
  Result (*moduleLoadData)(Module* module, const void* image) = nullptr;
  Result (*moduleGetFunction)(Function* fn, Module module, const char* name) = nullptr;
  Result (*moduleUnload)(Module module) = nullptr;
  Result (*launchKernel)(Function fn, unsigned gridX, unsigned gridY, unsigned gridZ,
                         unsigned blockX, unsigned blockY, unsigned blockZ, unsigned sharedBytes,
                         Stream stream, void** params, void** extra) = nullptr;
  Result (*memHostGetDevicePointer)(DevicePtr* dptr, void* host, unsigned flags) = nullptr;
};

}  // namespace kvtier::shim::cu
