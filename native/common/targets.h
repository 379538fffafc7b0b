// What a descriptor batch may name as memory: a host Region, a GPU DeviceRegion, or a plain
// JavaScript buffer. Shared by every engine so each resolves and keeps memory alive the same way.
#pragma once
#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "../gpu/device_memory.h"
#include "../memory/region_memory.h"
#include "errors.h"

namespace kvtier {

class Region;
class DeviceRegion;

struct Target {
  uint8_t* data = nullptr;  // a device address for GPU memory
  uint64_t size = 0;
  std::shared_ptr<RegionMemory> memory;  // set for host regions and views of them
  std::shared_ptr<DeviceMemory> device;  // set for GPU memory
  Napi::Value js;                        // set for JavaScript buffers (kept referenced)
};

// What a target is, decided while user JavaScript may still run (array getters, Proxy traps in
// instanceof); its pointer is taken only afterwards, in TargetMemory.
struct TargetRef {
  Napi::Value value;
  Region* region = nullptr;
  DeviceRegion* deviceRegion = nullptr;
};

struct FileHandle;

TargetRef ClassifyTarget(Napi::Env env, Napi::Value v, size_t index);
Target TargetMemory(Napi::Env env, const TargetRef& ref, size_t index);
// The open file behind a NativeFile in a batch's file list; KVTIER_CLOSED once it is closed.
std::shared_ptr<FileHandle> ResolveFile(Napi::Env env, Napi::Value v, size_t index);

// What every engine's submit(descriptors, targets, files) is handed, resolved.
struct BatchArgs {
  Napi::Float64Array descs;
  size_t count = 0;  // descriptors
  std::vector<Target> targets;
  std::vector<std::shared_ptr<FileHandle>> files;
};

// Reads submit()'s arguments: everything that can run user JavaScript (element getters, Proxy
// traps) first, then the pointers, so no script can detach a buffer between taking its pointer
// and using it. `files` false: the file list is not read (engines without files).
BatchArgs ReadBatchArgs(const Napi::CallbackInfo& info, bool files);

// The native object behind a wrapped JavaScript object, or a KVTIER_BAD_ARGUMENT for an object
// that only pretends to be one of ours (its prototype borrowed) and so wraps nothing.
template <typename T>
T* UnwrapOrThrow(Napi::Env env, Napi::Object o, const std::string& what) {
  void* raw = nullptr;
  if (napi_unwrap(env, o, &raw) != napi_ok || raw == nullptr) {
    Throw(env, kBadArgument, what + " is not a kvtier object");
  }
  return static_cast<T*>(raw);
}

}  // namespace kvtier
