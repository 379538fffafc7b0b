// The GPU file engine: reads files into GPU memory and writes GPU memory to files, either through
// cuFile (GPUDirect Storage, or cuFile's own compatibility mode) or through kvtier's POSIX path:
// pread/pwrite on kvtier threads into pinned bounce buffers, double-buffered against the DMA copy.
#pragma once
#include <napi.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../common/threaded_object.h"
#include "../shim/cuda_api.h"

namespace kvtier {

struct FileHandle;
class DeviceMemory;

class GpuFileEngine : public Napi::ObjectWrap<GpuFileEngine> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit GpuFileEngine(const Napi::CallbackInfo& info);
  ~GpuFileEngine() override;

  struct JsBatch;
  struct Op;
  struct Worker;

 private:
  static void Deliver(Napi::Env env, Napi::Function, GpuFileEngine* engine, JsBatch* batch);
  Napi::Value Submit(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Kind(const Napi::CallbackInfo& info);
  Napi::Value QueueDepth(const Napi::CallbackInfo& info);
  Napi::Value InFlight(const Napi::CallbackInfo& info);
  Napi::Value Fallbacks(const Napi::CallbackInfo& info);
  void Work(Worker* worker);
  void Run(Op* op, Worker* worker);
  // Workers drain the queue, then join; their CUDA resources go with them.
  void StopWork();

  using Tsfn = Napi::TypedThreadSafeFunction<GpuFileEngine, JsBatch, &GpuFileEngine::Deliver>;
  const shim::cu::Api* api_ = nullptr;
  int device_ = 0;
  bool cufile_ = false;
  bool fallback_ = false;
  std::atomic<uint64_t> fallbacks_{0};
  size_t chunkBytes_ = 0;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Op*> queue_;      // guarded by mutex_
  bool stopping_ = false;      // guarded by mutex_
  ThreadedObject<Tsfn> life_;  // its busy count: batches out (main thread only)
};

}  // namespace kvtier
