// One batch of the GPU copy engine between submit (or decode) and its promise, shared by
// copy_engine.cc and copy_engine_codec.cc.
#pragma once
#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "../shim/cuda_api.h"
#include "copy_engine.h"

namespace kvtier {

struct CopyEngine::JsBatch {
  explicit JsBatch(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise::Deferred deferred;
  std::vector<napi_ref> borrowed;                // user buffers, released on the main thread
  std::vector<std::shared_ptr<void>> keepAlive;  // regions' memory, host and device
  std::vector<shim::cu::DevicePtr> dsts, srcs;   // the copies, in submission order
  std::vector<size_t> sizes;
  std::vector<char> dstDevice, srcDevice;  // whether each side is GPU memory
  void* table = nullptr;                   // the kernel's segment table, if any
  size_t tableBytes = 0;
  std::vector<double> results;  // bytes per descriptor
  shim::cu::Event event = nullptr;
  // Pageable host memory makes the driver copy synchronously: such batches are queued by the
  // completer thread, on this stream, so the event loop never waits for a copy.
  shim::cu::Stream deferredOn = nullptr;
  shim::cu::Result rc = shim::cu::kSuccess;  // set by the completer
  std::string error;                         // set by the completer when it cannot wait
};

}  // namespace kvtier
