// The GPU copy engine: one native call takes a list of copy descriptors between host memory
// (regions, pinned or not, and JavaScript buffers) and GPU memory, queues them on kvtier's own
// CUDA streams, and resolves one promise when the last of them has landed.
#pragma once
#include <napi.h>

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

class CopyEngine : public Napi::ObjectWrap<CopyEngine> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit CopyEngine(const Napi::CallbackInfo& info);
  ~CopyEngine() override;

 private:
  struct JsBatch;
  static void Deliver(Napi::Env env, Napi::Function, CopyEngine* engine, JsBatch* batch);
  Napi::Value Submit(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Kind(const Napi::CallbackInfo& info);
  Napi::Value QueueDepth(const Napi::CallbackInfo& info);
  Napi::Value InFlight(const Napi::CallbackInfo& info);
  Napi::Value BatchCopy(const Napi::CallbackInfo& info);
  Napi::Value KernelPath(const Napi::CallbackInfo& info);
  // decode(params, src, srcOffset, dst, dstOffset, blocks): encoded blocks in pinned host memory
  // to decoded blocks in GPU memory, PCIe carrying the encoded form (copy_engine_codec.cc).
  Napi::Value Decode(const Napi::CallbackInfo& info);
  Napi::Value DecodePath(const Napi::CallbackInfo& info);
  // Makes the device current and keeps one completion event spare (throws, nothing queued).
  void MakeReady(Napi::Env env);
  // Hands a batch queued on its stream to the completion thread.
  void HandOff(Napi::Env env, std::unique_ptr<JsBatch> batch);
  // Waits for each batch's completion event in submission order, off the main thread.
  void Complete();
  // Joins the completer (every queued batch finishes first) and frees the CUDA resources.
  void StopWork();
  struct Lane {
    shim::cu::Stream stream = nullptr;
    shim::cu::DevicePtr staging = 0;  // HBM the kernel path rearranges through (stream-ordered)
    size_t stagingBytes = 0;
  };
  // Queues one batch's copies on a lane; an empty string means queued.
  std::string Enqueue(JsBatch* batch, Lane& lane);
  // DMA copies, handed to the driver as one list where it takes lists.
  shim::cu::Result Dma(std::vector<shim::cu::DevicePtr>& dsts,
                       std::vector<shim::cu::DevicePtr>& srcs, std::vector<size_t>& sizes,
                       shim::cu::Stream stream);
  // The kernel path: small pieces are gathered or scattered in HBM, PCIe sees large copies.
  // Returns false (nothing queued) when it does not apply; *error when it failed part-way.
  bool EnqueueStaged(JsBatch* batch, Lane& lane, std::string* error);
  void LoadKernel();
  // Grows the lane's HBM staging to at least `bytes`; false when there is no room.
  bool EnsureStaging(Lane& lane, size_t bytes);

  using Tsfn = Napi::TypedThreadSafeFunction<CopyEngine, JsBatch, &CopyEngine::Deliver>;
  const shim::cu::Api* api_ = nullptr;
  int device_ = 0;
  bool useBatch_ = true;   // hand lists to cuMemcpyBatchAsync where the driver has it
  bool useKernel_ = true;  // gather and scatter small pieces through HBM with the kernel
  std::vector<Lane> lanes_;
  std::vector<shim::cu::Event> spareEvents_;  // main thread only
  // Pinned, device-mapped segment tables the kernel reads, reused once their batch is delivered.
  std::vector<std::pair<void*, size_t>> spareTables_;  // main thread only
  shim::cu::Module module_ = nullptr;
  shim::cu::Function kernel_ = nullptr;
  std::string kernelReason_;  // why the kernel path is off, when it is
  // The decode kernels: fp8, int8, kivi (both widths); null with decodeReason_ when not loaded.
  shim::cu::Function decodeKernels_[3] = {nullptr, nullptr, nullptr};
  std::string decodeReason_;
  uint64_t decodeStaging_ = uint64_t{256} << 20;  // bytes of encoded blocks a decode run stages
  size_t nextStream_ = 0;
  std::thread completer_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<JsBatch*> pending_;  // guarded by mutex_
  bool stopping_ = false;         // guarded by mutex_
  ThreadedObject<Tsfn> life_;     // its busy count: batches out (main thread only)
};

}  // namespace kvtier
