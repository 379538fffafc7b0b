// Per-environment state (one per main thread or worker_thread that loads the addon).
#pragma once
#include <napi.h>

namespace kvtier {

struct InstanceData {
  Napi::FunctionReference errorClass;
  Napi::FunctionReference regionCtor;
  Napi::FunctionReference fileCtor;
  Napi::FunctionReference engineCtor;

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
