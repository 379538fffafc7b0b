// Runtime loader for the CUDA driver API (libcuda.so.1). kvtier declares the handful of types and
// entry points it needs itself, so the addon builds with no CUDA toolkit and loads without a GPU.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "cuda_api.h"
#include "lib_status.h"

namespace kvtier::shim {

struct CudaDevice {
  int ordinal = 0;
  std::string name;
  std::string pciBusId;
  size_t totalMemBytes = 0;
  int computeMajor = 0;
  int computeMinor = 0;
};

class Cuda {
 public:
  // Loads and initialises once (thread-safe); never throws.
  static Cuda& instance();

  // loaded == libcuda found and cuInit(0) succeeded; reason says what failed otherwise.
  const LibStatus& status() const { return status_; }
  int driverVersion() const { return driverVersion_; }  // e.g. 13000, 0 when unknown
  const std::vector<CudaDevice>& devices() const { return devices_; }
  // True when the driver is usable and at least one device exists.
  bool usable() const { return status_.loaded && !devices_.empty(); }

  // Page-locks host memory for DMA (cuMemHostRegister with PORTABLE), using device 0's primary
  // context. Safe to call from any thread. On failure returns false and fills *error.
  bool hostRegister(void* ptr, size_t bytes, std::string* error);
  // Undoes hostRegister; safe from any thread. Returns false on failure.
  bool hostUnregister(void* ptr);

  // The GPU data path's entry points, or nullptr with *why saying what is missing: no driver, no
  // device, or a driver too old for a call kvtier needs (named).
  const cu::Api* gpu(std::string* why) const;
  // Whether the driver batches copies itself (cuMemcpyBatchAsync, CUDA 12.8 and later).
  bool batchCopy() const {
    return api_.memcpyBatchAsync != nullptr || api_.memcpyBatchAsync128 != nullptr;
  }
  // Makes `ordinal`'s primary context current on the calling thread (retained once per device and
  // kept for the process lifetime). The primary context is the one the CUDA runtime, and so
  // PyTorch, uses: pointers and handles are shared with it.
  bool makeCurrent(int ordinal, std::string* why);
  // "cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)".
  std::string fail(const char* call, int rc) const;

 private:
  Cuda();
  LibStatus status_;
  int driverVersion_ = 0;
  std::vector<CudaDevice> devices_;
  void* lib_ = nullptr;
  std::vector<void*> contexts_;  // per ordinal, retained on first makeCurrent (guarded by Fns)
  cu::Api api_;
  std::string gpuMissing_;  // first required GPU entry point the driver lacks
  struct Fns;
  Fns* fns_ = nullptr;
};

}  // namespace kvtier::shim
