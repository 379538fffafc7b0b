#include "device_memory.h"

#include <cstdio>
#include <utility>

#include "../common/errors.h"
#include "../shim/cuda.h"
#include "../shim/cufile.h"

namespace kvtier {

namespace {

using shim::Cuda;
namespace cu = shim::cu;

// The driver entry points with `device` current on this thread, or nullptr and a failure.
const cu::Api* Enter(int device, DeviceMemory::Failure* failure) {
  Cuda& cuda = Cuda::instance();
  std::string why;
  const cu::Api* api = cuda.gpu(&why);
  if (api == nullptr || !cuda.makeCurrent(device, &why)) {
    failure->code = kNotAvailable;
    failure->message = why;
    return nullptr;
  }
  return api;
}

std::string Hex(cu::DevicePtr ptr) {
  char hex[32];
  std::snprintf(hex, sizeof(hex), "0x%llx", ptr);
  return hex;
}

void Fail(DeviceMemory::Failure* failure, const char* code, std::string message) {
  failure->code = code;
  failure->message = std::move(message);
}

}  // namespace

std::shared_ptr<DeviceMemory> DeviceMemory::Allocate(int device, size_t bytes, Failure* failure) {
  const cu::Api* api = Enter(device, failure);
  if (api == nullptr) return nullptr;
  cu::DevicePtr ptr = 0;
  cu::Result rc = api->memAlloc(&ptr, bytes);
  if (rc != cu::kSuccess) {
    // 2 is CUDA_ERROR_OUT_OF_MEMORY: a capacity problem the caller can act on, not a fault.
    Fail(failure, rc == 2 ? kNoSpace : kIo,
         Cuda::instance().fail("cuMemAlloc", rc) + " for " + std::to_string(bytes) + " bytes");
    return nullptr;
  }
  return std::shared_ptr<DeviceMemory>(new DeviceMemory(device, ptr, ptr, bytes, Origin::kOwned));
}

std::shared_ptr<DeviceMemory> DeviceMemory::Wrap(int device, cu::DevicePtr ptr, size_t bytes,
                                                 Failure* failure) {
  const cu::Api* api = Enter(device, failure);
  if (api == nullptr) return nullptr;
  cu::DevicePtr base = 0;
  size_t extent = 0;
  cu::Result rc = api->memGetAddressRange(&base, &extent, ptr);
  if (rc != cu::kSuccess) {
    Fail(failure, kBadArgument,
         "pointer " + Hex(ptr) + " is not device memory of this process on device " +
             std::to_string(device) + ": " + Cuda::instance().fail("cuMemGetAddressRange", rc));
    return nullptr;
  }
  int owner = -1;
  if (api->pointerGetAttribute != nullptr &&
      api->pointerGetAttribute(&owner, cu::kPointerAttributeDeviceOrdinal, ptr) == cu::kSuccess &&
      owner != device) {
    Fail(failure, kBadArgument,
         "pointer " + Hex(ptr) + " is memory of device " + std::to_string(owner) +
             ", not of device " + std::to_string(device));
    return nullptr;
  }
  if (bytes > extent - (ptr - base)) {
    Fail(failure, kBadArgument,
         std::to_string(bytes) + " bytes do not fit the allocation, which has " +
             std::to_string(extent - (ptr - base)) + " bytes from that pointer on");
    return nullptr;
  }
  return std::shared_ptr<DeviceMemory>(
      new DeviceMemory(device, base, ptr, bytes, Origin::kWrapped));
}

std::shared_ptr<DeviceMemory> DeviceMemory::Import(int device, const cu::IpcMemHandle& handle,
                                                   size_t offset, size_t bytes, Failure* failure) {
  const cu::Api* api = Enter(device, failure);
  if (api == nullptr) return nullptr;
  cu::DevicePtr base = 0;
  cu::Result rc = api->ipcOpenMemHandle(&base, handle, cu::kIpcLazyEnablePeerAccess);
  if (rc != cu::kSuccess) {
    Fail(failure, kBadArgument,
         Cuda::instance().fail("cuIpcOpenMemHandle", rc) +
             " (a handle must come from another live process; one process cannot import its own)");
    return nullptr;
  }
  cu::DevicePtr rangeBase = 0;
  size_t extent = 0;
  rc = api->memGetAddressRange(&rangeBase, &extent, base);
  if (rc != cu::kSuccess || offset > extent || bytes > extent - offset) {
    std::string why = rc != cu::kSuccess
                          ? Cuda::instance().fail("cuMemGetAddressRange", rc)
                          : std::to_string(bytes) + " bytes at offset " + std::to_string(offset) +
                                " do not fit the shared allocation of " + std::to_string(extent) +
                                " bytes";
    (void)api->ipcCloseMemHandle(base);
    Fail(failure, rc != cu::kSuccess ? kIo : kBadArgument, why);
    return nullptr;
  }
  size_t size = bytes == 0 ? extent - offset : bytes;
  if (size == 0) {
    (void)api->ipcCloseMemHandle(base);
    Fail(failure, kBadArgument,
         "offset " + std::to_string(offset) + " leaves no bytes of the shared allocation");
    return nullptr;
  }
  return std::shared_ptr<DeviceMemory>(
      new DeviceMemory(device, base, base + offset, size, Origin::kImported));
}

DeviceMemory::~DeviceMemory() {
  Cuda& cuda = Cuda::instance();
  std::string why;
  const cu::Api* api = cuda.gpu(&why);
  if (api == nullptr || !cuda.makeCurrent(device_, &why)) return;
  if (cufileState_ == 1) shim::CuFile::instance().bufDeregister(reinterpret_cast<void*>(ptr_));
  // Nothing useful can be done with a failure here: the driver reclaims it at process exit.
  if (origin_ == Origin::kOwned) {
    (void)api->memFree(base_);
  } else if (origin_ == Origin::kImported) {
    (void)api->ipcCloseMemHandle(base_);
  }
}

bool DeviceMemory::ipcHandle(cu::IpcMemHandle* handle, size_t* offset, std::string* why) const {
  Failure failure;
  const cu::Api* api = Enter(device_, &failure);
  if (api == nullptr) {
    *why = failure.message;
    return false;
  }
  if (origin_ == Origin::kImported) {
    *why = "memory imported from another process cannot be shared again from here";
    return false;
  }
  cu::Result rc = api->ipcGetMemHandle(handle, base_);
  if (rc != cu::kSuccess) {
    *why = Cuda::instance().fail("cuIpcGetMemHandle", rc);
    return false;
  }
  *offset = static_cast<size_t>(ptr_ - base_);
  return true;
}

bool DeviceMemory::registerWithCuFile() {
  std::lock_guard<std::mutex> lock(cufileMutex_);
  if (cufileState_ == 0) {
    cufileState_ =
        shim::CuFile::instance().bufRegister(reinterpret_cast<void*>(ptr_), size_) ? 1 : -1;
  }
  return cufileState_ == 1;
}

}  // namespace kvtier
