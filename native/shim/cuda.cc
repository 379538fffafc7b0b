#include "cuda.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "dl_handle.h"

namespace kvtier::shim {

namespace {

// The slice of the CUDA driver API kvtier uses, declared from NVIDIA's public documentation so the
// addon needs no CUDA toolkit to build. CUresult and CUdevice_attribute are C enums (int-sized).
using CUresult = int;
using CUdevice = int;
using CUcontext = struct CUctx_st*;

constexpr CUresult kCudaSuccess = 0;
constexpr int kAttrPciBusId = 33;
constexpr int kAttrPciDeviceId = 34;
constexpr int kAttrPciDomainId = 50;
constexpr int kAttrComputeCapabilityMajor = 75;
constexpr int kAttrComputeCapabilityMinor = 76;
// PORTABLE: the pinning counts for every CUDA context in the process, not only the one current
// when registering, so the runtime API (PyTorch, CuPy) can DMA from these pages too.
constexpr unsigned kMemHostRegisterPortable = 0x01;

using CuInitFn = CUresult (*)(unsigned flags);
using CuDriverGetVersionFn = CUresult (*)(int* version);
using CuDeviceGetCountFn = CUresult (*)(int* count);
using CuDeviceGetFn = CUresult (*)(CUdevice* device, int ordinal);
using CuDeviceGetNameFn = CUresult (*)(char* name, int len, CUdevice device);
using CuDeviceTotalMemFn = CUresult (*)(size_t* bytes, CUdevice device);
using CuDeviceGetAttributeFn = CUresult (*)(int* value, int attribute, CUdevice device);
using CuDevicePrimaryCtxRetainFn = CUresult (*)(CUcontext* ctx, CUdevice device);
using CuCtxSetCurrentFn = CUresult (*)(CUcontext ctx);
using CuMemHostRegisterFn = CUresult (*)(void* ptr, size_t bytes, unsigned flags);
using CuMemHostUnregisterFn = CUresult (*)(void* ptr);
using CuGetErrorTextFn = CUresult (*)(CUresult error, const char** text);

// Resolves the GPU data path's entry points. A missing one does not make the driver unusable for
// pinning host memory; it is reported when the GPU path is asked for.
void LoadGpuApi(const detail::DlHandle& lib, cu::Api* api, std::string* missing) {
  auto need = [&](const char* name, auto* fn) {
    if (!lib.optionalSym(name, fn) && missing->empty()) *missing = name;
  };
  need("cuMemAlloc_v2", &api->memAlloc);
  need("cuMemFree_v2", &api->memFree);
  need("cuMemGetAddressRange_v2", &api->memGetAddressRange);
  need("cuMemHostAlloc", &api->memHostAlloc);
  need("cuMemFreeHost", &api->memFreeHost);
  need("cuMemcpyAsync", &api->memcpyAsync);
  need("cuStreamCreate", &api->streamCreate);
  need("cuStreamDestroy_v2", &api->streamDestroy);
  need("cuStreamSynchronize", &api->streamSynchronize);
  need("cuEventCreate", &api->eventCreate);
  need("cuEventRecord", &api->eventRecord);
  need("cuEventSynchronize", &api->eventSynchronize);
  need("cuEventDestroy_v2", &api->eventDestroy);
  need("cuIpcGetMemHandle", &api->ipcGetMemHandle);
  need("cuIpcOpenMemHandle_v2", &api->ipcOpenMemHandle);
  need("cuIpcCloseMemHandle", &api->ipcCloseMemHandle);
  (void)lib.optionalSym("cuPointerGetAttribute", &api->pointerGetAttribute);
  (void)lib.optionalSym("cuModuleLoadData", &api->moduleLoadData);
  (void)lib.optionalSym("cuModuleGetFunction", &api->moduleGetFunction);
  (void)lib.optionalSym("cuModuleUnload", &api->moduleUnload);
  (void)lib.optionalSym("cuLaunchKernel", &api->launchKernel);
  (void)lib.optionalSym("cuMemHostGetDevicePointer_v2", &api->memHostGetDevicePointer);
  // CUDA 13 exports the batch copy without failIdx as _v2; 12.8 and 12.9 only the first form.
  if (!lib.optionalSym("cuMemcpyBatchAsync_v2", &api->memcpyBatchAsync)) {
    (void)lib.optionalSym("cuMemcpyBatchAsync", &api->memcpyBatchAsync128);
  }
  // Opt out of the driver's batch copy, to compare against per-copy submission.
  const char* off = std::getenv("KVTIER_CUDA_NO_BATCH_COPY");
  if (off != nullptr && off[0] != '\0' && off[0] != '0') {
    api->memcpyBatchAsync = nullptr;
    api->memcpyBatchAsync128 = nullptr;
  }
}

}  // namespace

struct Cuda::Fns {
  CuInitFn init = nullptr;
  CuDriverGetVersionFn driverGetVersion = nullptr;
  CuDeviceGetCountFn deviceGetCount = nullptr;
  CuDeviceGetFn deviceGet = nullptr;
  CuDeviceGetNameFn deviceGetName = nullptr;
  CuDeviceTotalMemFn deviceTotalMem = nullptr;
  CuDeviceGetAttributeFn deviceGetAttribute = nullptr;
  CuDevicePrimaryCtxRetainFn devicePrimaryCtxRetain = nullptr;
  CuCtxSetCurrentFn ctxSetCurrent = nullptr;
  CuMemHostRegisterFn memHostRegister = nullptr;
  CuMemHostUnregisterFn memHostUnregister = nullptr;
  CuGetErrorTextFn getErrorName = nullptr;
  CuGetErrorTextFn getErrorString = nullptr;
  // Guards Cuda::contexts_: the first calls may race on several kvtier threads, and each primary
  // context must be retained exactly once (each retain is a reference that is never released,
  // since pinned regions and device memory can outlive any caller).
  std::mutex ctxMutex;

  // "CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)"; both lookups work before cuInit.
  std::string describe(CUresult rc) const {
    const char* name = nullptr;
    const char* text = nullptr;
    if (getErrorName == nullptr || getErrorName(rc, &name) != kCudaSuccess || name == nullptr) {
      name = nullptr;
    }
    if (getErrorString == nullptr || getErrorString(rc, &text) != kCudaSuccess || text == nullptr) {
      text = nullptr;
    }
    std::string out = name != nullptr ? name : "CUresult " + std::to_string(rc);
    if (text != nullptr) out += std::string(" (") + text + ")";
    return out;
  }

  std::string fail(const char* call, CUresult rc) const {
    return std::string(call) + " failed: " + describe(rc);
  }
};

Cuda& Cuda::instance() {
  // Deliberately leaked: pinned regions are unregistered from destructors that may run during
  // process exit, after a function-local static Cuda would already have been destroyed.
  static Cuda* cuda = new Cuda();
  return *cuda;
}

Cuda::Cuda() {
  try {
    detail::DlHandle lib;
    if (!lib.open("libcuda.so.1", &status_.reason)) return;
    status_.path = lib.realPath();

    auto fns = std::make_unique<Fns>();
    if (!lib.sym("cuInit", &fns->init, &status_.reason) ||
        !lib.sym("cuDriverGetVersion", &fns->driverGetVersion, &status_.reason) ||
        !lib.sym("cuDeviceGetCount", &fns->deviceGetCount, &status_.reason) ||
        !lib.sym("cuDeviceGet", &fns->deviceGet, &status_.reason) ||
        !lib.sym("cuDeviceGetName", &fns->deviceGetName, &status_.reason) ||
        !lib.sym("cuDeviceTotalMem_v2", &fns->deviceTotalMem, &status_.reason) ||
        !lib.sym("cuDeviceGetAttribute", &fns->deviceGetAttribute, &status_.reason) ||
        !lib.sym("cuDevicePrimaryCtxRetain", &fns->devicePrimaryCtxRetain, &status_.reason) ||
        !lib.sym("cuCtxSetCurrent", &fns->ctxSetCurrent, &status_.reason) ||
        !lib.sym("cuMemHostRegister_v2", &fns->memHostRegister, &status_.reason) ||
        !lib.sym("cuMemHostUnregister", &fns->memHostUnregister, &status_.reason) ||
        !lib.sym("cuGetErrorName", &fns->getErrorName, &status_.reason) ||
        !lib.sym("cuGetErrorString", &fns->getErrorString, &status_.reason)) {
      return;
    }

    LoadGpuApi(lib, &api_, &gpuMissing_);

    // Asked before cuInit so `kvtier info` still shows the driver version when init fails.
    int version = 0;
    CUresult rc = fns->driverGetVersion(&version);
    if (rc == kCudaSuccess && version > 0) {
      driverVersion_ = version;
      status_.version = std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
    }

    rc = fns->init(0);
    // From here on the library stays mapped even if init failed: cuInit may have started driver
    // threads or registered exit handlers that must not be left pointing into unmapped code.
    lib_ = lib.release();
    fns_ = fns.release();
    if (rc != kCudaSuccess) {
      status_.reason = fns_->fail("cuInit", rc);
      return;
    }
    status_.loaded = true;

    int count = 0;
    rc = fns_->deviceGetCount(&count);
    if (rc != kCudaSuccess) {
      status_.reason = fns_->fail("cuDeviceGetCount", rc);
      return;
    }
    std::string problems;
    for (int ordinal = 0; ordinal < count; ++ordinal) {
      std::string why;
      CudaDevice dev;
      dev.ordinal = ordinal;
      CUdevice handle = 0;
      char name[256] = {};
      int bus = 0;
      int device = 0;
      int domain = 0;
      if ((rc = fns_->deviceGet(&handle, ordinal)) != kCudaSuccess) {
        why = fns_->fail("cuDeviceGet", rc);
      } else if ((rc = fns_->deviceGetName(name, static_cast<int>(sizeof(name)) - 1, handle)) !=
                 kCudaSuccess) {
        why = fns_->fail("cuDeviceGetName", rc);
      } else if ((rc = fns_->deviceTotalMem(&dev.totalMemBytes, handle)) != kCudaSuccess) {
        why = fns_->fail("cuDeviceTotalMem_v2", rc);
      } else if ((rc = fns_->deviceGetAttribute(&dev.computeMajor, kAttrComputeCapabilityMajor,
                                                handle)) != kCudaSuccess ||
                 (rc = fns_->deviceGetAttribute(&dev.computeMinor, kAttrComputeCapabilityMinor,
                                                handle)) != kCudaSuccess ||
                 (rc = fns_->deviceGetAttribute(&domain, kAttrPciDomainId, handle)) !=
                     kCudaSuccess ||
                 (rc = fns_->deviceGetAttribute(&bus, kAttrPciBusId, handle)) != kCudaSuccess ||
                 (rc = fns_->deviceGetAttribute(&device, kAttrPciDeviceId, handle)) !=
                     kCudaSuccess) {
        why = fns_->fail("cuDeviceGetAttribute", rc);
      }
      if (!why.empty()) {
        // One broken device should not hide the others; the reason names what was skipped.
        problems +=
            (problems.empty() ? "" : "; ") + ("device " + std::to_string(ordinal) + ": ") + why;
        continue;
      }
      dev.name = name;
      // Same spelling as sysfs (/sys/bus/pci/devices/0000:3b:00.0), so it can be looked up there.
      char pci[32];
      std::snprintf(pci, sizeof(pci), "%04x:%02x:%02x.0", static_cast<unsigned>(domain),
                    static_cast<unsigned>(bus), static_cast<unsigned>(device));
      dev.pciBusId = pci;
      devices_.push_back(std::move(dev));
    }
    if (!problems.empty()) {
      status_.reason = problems;
    } else if (devices_.empty()) {
      status_.reason = "no CUDA devices (cuDeviceGetCount returned 0)";
    }
  } catch (const std::exception& e) {
    status_.loaded = false;
    status_.reason = std::string("probing libcuda failed: ") + e.what();
  }
}

bool Cuda::hostRegister(void* ptr, size_t bytes, std::string* error) {
  std::string scratch;
  std::string& why = error != nullptr ? *error : scratch;
  if (ptr == nullptr || bytes == 0) {
    why = "cuMemHostRegister needs a non-null pointer and a non-zero size";
    return false;
  }
  // Callers arrive on arbitrary kvtier threads, and the current context is per thread.
  if (!usable() || !makeCurrent(devices_.front().ordinal, &why)) {
    if (!usable())
      why = "CUDA is not usable: " +
            (status_.reason.empty() ? std::string("no CUDA device") : status_.reason);
    return false;
  }
  CUresult rc = fns_->memHostRegister(ptr, bytes, kMemHostRegisterPortable);
  if (rc != kCudaSuccess) {
    why = fns_->fail("cuMemHostRegister", rc) + " for " + std::to_string(bytes) + " bytes";
    return false;
  }
  return true;
}

bool Cuda::hostUnregister(void* ptr) {
  if (!usable() || ptr == nullptr) return false;
  {
    std::lock_guard<std::mutex> lock(fns_->ctxMutex);
    // No context means nothing was ever registered through hostRegister.
    if (contexts_.empty() || contexts_[0] == nullptr) return false;
  }
  std::string why;
  if (!makeCurrent(devices_.front().ordinal, &why)) return false;
  return fns_->memHostUnregister(ptr) == kCudaSuccess;
}

const cu::Api* Cuda::gpu(std::string* why) const {
  if (!usable()) {
    *why = "CUDA is not usable: " +
           (status_.reason.empty() ? std::string("no CUDA device") : status_.reason);
    return nullptr;
  }
  if (!gpuMissing_.empty()) {
    *why = "the CUDA driver " + status_.version + " at " + status_.path + " lacks " + gpuMissing_ +
           ", which kvtier's GPU path needs; a newer NVIDIA driver provides it";
    return nullptr;
  }
  return &api_;
}

std::string Cuda::fail(const char* call, int rc) const {
  return fns_ != nullptr ? fns_->fail(call, rc)
                         : std::string(call) + " failed: " + std::to_string(rc);
}

bool Cuda::makeCurrent(int ordinal, std::string* why) {
  if (!usable()) {
    *why = "CUDA is not usable: " +
           (status_.reason.empty() ? std::string("no CUDA device") : status_.reason);
    return false;
  }
  CUcontext ctx = nullptr;
  {
    std::lock_guard<std::mutex> lock(fns_->ctxMutex);
    // devices_ lists the devices that probed well; find the one with this ordinal.
    size_t at = devices_.size();
    for (size_t i = 0; i < devices_.size(); ++i) {
      if (devices_[i].ordinal == ordinal) at = i;
    }
    if (at == devices_.size()) {
      *why = "no usable CUDA device " + std::to_string(ordinal) + " (this machine has " +
             std::to_string(devices_.size()) + ")";
      return false;
    }
    if (contexts_.size() < devices_.size()) contexts_.resize(devices_.size(), nullptr);
    if (contexts_[at] == nullptr) {
      CUdevice dev = 0;
      CUresult rc = fns_->deviceGet(&dev, ordinal);
      if (rc != kCudaSuccess) {
        *why = fns_->fail("cuDeviceGet", rc);
        return false;
      }
      CUcontext retained = nullptr;
      rc = fns_->devicePrimaryCtxRetain(&retained, dev);
      if (rc != kCudaSuccess) {
        *why = fns_->fail("cuDevicePrimaryCtxRetain", rc);
        return false;
      }
      contexts_[at] = retained;
    }
    ctx = static_cast<CUcontext>(contexts_[at]);
  }
  CUresult rc = fns_->ctxSetCurrent(ctx);
  if (rc != kCudaSuccess) {
    *why = fns_->fail("cuCtxSetCurrent", rc);
    return false;
  }
  return true;
}

}  // namespace kvtier::shim
