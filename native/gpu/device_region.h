// JavaScript face of a DeviceMemory: GPU memory that JavaScript cannot read directly, only name
// in copies and GPU file I/O. Closed explicitly or by the garbage collector.
#pragma once
#include <napi.h>

#include <memory>

#include "device_memory.h"

namespace kvtier {

class DeviceRegion : public Napi::ObjectWrap<DeviceRegion> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit DeviceRegion(const Napi::CallbackInfo& info);

  // The memory, or nullptr once closed.
  std::shared_ptr<DeviceMemory> memory() const { return memory_; }

 private:
  Napi::Value ByteLength(const Napi::CallbackInfo& info);
  Napi::Value Device(const Napi::CallbackInfo& info);
  Napi::Value Pointer(const Napi::CallbackInfo& info);
  Napi::Value Origin(const Napi::CallbackInfo& info);
  Napi::Value IpcHandle(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  std::shared_ptr<DeviceMemory> memory_;  // reset by close()
  // Kept apart from memory_ so a closed region still describes itself.
  size_t size_ = 0;
  int device_ = 0;
  uint64_t pointer_ = 0;
  const char* origin_ = "owned";
};

}  // namespace kvtier
