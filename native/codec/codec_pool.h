// Encode and decode off the main thread: kvtier's codec threads take one batch of consecutive
// blocks per call, split it across the threads, and settle one promise through a thread-safe
// function when the last part is done. The threads see only byte pointers (no JavaScript); the
// buffers are referenced on the main thread until the promise settles.
#pragma once
#include <napi.h>

#include <cstdint>

#include "../common/threaded_object.h"
#include "../common/worker_pool.h"

namespace kvtier {

class CodecPool : public Napi::ObjectWrap<CodecPool> {
 public:
  static Napi::Function Define(Napi::Env env);
  // new NativeCodecPool({ threads })
  explicit CodecPool(const Napi::CallbackInfo& info);
  ~CodecPool() override;

  struct Call;
  // Blocks [first, last) of one call.
  struct Task {
    Call* call = nullptr;
    uint64_t first = 0;
    uint64_t last = 0;
  };

 private:
  static void Deliver(Napi::Env env, Napi::Function, CodecPool* pool, Call* call);
  // run(op: 'encode' | 'decode', params, src, dst, blocks, isa?) -> Promise<void>
  Napi::Value Run(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Threads(const Napi::CallbackInfo& info);
  Napi::Value InFlight(const Napi::CallbackInfo& info);
  void Execute(Task& task);  // codec threads

  using Tsfn = Napi::TypedThreadSafeFunction<CodecPool, Call, &CodecPool::Deliver>;
  unsigned threads_ = 1;
  WorkerPool<Task> pool_;
  // Its busy count is the calls queued and not yet settled (main thread only).
  ThreadedObject<Tsfn> life_;
};

}  // namespace kvtier
