// Per-environment state (one per main thread or worker_thread that loads the addon).
#pragma once
#include <napi.h>

#include <memory>
#include <unordered_map>

namespace kvtier {

struct InstanceData {
  Napi::FunctionReference errorClass;
  Napi::FunctionReference regionCtor;
  Napi::FunctionReference fileCtor;
  Napi::FunctionReference engineCtor;
  Napi::FunctionReference deviceRegionCtor;
  // Open regions by the address of their memory, so a plain ArrayBuffer or view of a region's
  // memory handed to an engine is known as that region (and its memory kept alive).
  std::unordered_map<const void*, std::weak_ptr<void>> regionMemory;

  static InstanceData& Get(Napi::Env env) {
    InstanceData* data = env.GetInstanceData<InstanceData>();
    if (data == nullptr) {
      data = new InstanceData();
      env.SetInstanceData(data);  // freed by node-addon-api's default finalizer at env teardown
    }
    return *data;
  }
};

}  // namespace kvtier
