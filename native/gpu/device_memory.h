// GPU memory that copies and cuFile I/O can target: allocated by kvtier, borrowed from another
// library in this process, or imported from another process by CUDA IPC handle. Shared ownership
// lets in-flight transfers keep it alive after JavaScript closed the DeviceRegion.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "../shim/cuda_api.h"

namespace kvtier {

class DeviceMemory {
 public:
  enum class Origin { kOwned, kWrapped, kImported };

  struct Failure {
    const char* code = nullptr;  // a kvtier error code
    std::string message;
  };

  // cuMemAlloc on `device`.
  static std::shared_ptr<DeviceMemory> Allocate(int device, size_t bytes, Failure* failure);
  // Borrows [ptr, ptr + bytes), which must lie inside one allocation of this process on `device`;
  // kvtier never frees it.
  static std::shared_ptr<DeviceMemory> Wrap(int device, shim::cu::DevicePtr ptr, size_t bytes,
                                            Failure* failure);
  // Opens another process's allocation and takes [offset, offset + bytes) of it (bytes 0: the
  // rest of the allocation). The mapping is closed with the last user.
  static std::shared_ptr<DeviceMemory> Import(int device, const shim::cu::IpcMemHandle& handle,
                                              size_t offset, size_t bytes, Failure* failure);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  shim::cu::DevicePtr ptr() const { return ptr_; }
  size_t size() const { return size_; }
  int device() const { return device_; }
  Origin origin() const { return origin_; }

  // The IPC handle of the allocation this memory lies in, and where in it this memory starts.
  bool ipcHandle(shim::cu::IpcMemHandle* handle, size_t* offset, std::string* why) const;

  // Registers the memory with cuFile once (GPUDirect needs it; compat mode does not), and
  // deregisters it before the memory goes. Returns whether it is registered.
  bool registerWithCuFile();

 private:
  DeviceMemory(int device, shim::cu::DevicePtr base, shim::cu::DevicePtr ptr, size_t size,
               Origin origin)
      : device_(device), base_(base), ptr_(ptr), size_(size), origin_(origin) {}
  int device_;
  shim::cu::DevicePtr base_;  // what cuMemFree or cuIpcCloseMemHandle takes
  shim::cu::DevicePtr ptr_;
  size_t size_;
  Origin origin_;
  std::mutex cufileMutex_;
  int cufileState_ = 0;  // 0 not tried, 1 registered, -1 refused
};

}  // namespace kvtier
