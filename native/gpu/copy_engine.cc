#include "copy_engine.h"

#include <algorithm>
#include <exception>
#include <memory>
#include <utility>

#include "../common/args.h"
#include "../common/descriptors.h"
#include "../common/errors.h"
#include "../common/instance_data.h"
#include "../common/targets.h"
#include "../shim/cuda.h"
#include "copy_engine_batch.h"
#include "kernels_ptx.h"

namespace kvtier {

namespace cu = shim::cu;
using shim::Cuda;

namespace {
constexpr int kCopyOp = 3;
// The kernel path pays for itself when pieces are small: DMA reaches full PCIe speed only for
// copies of a few MiB, while the kernel moves 64 KiB pieces at HBM speed.
constexpr size_t kKernelMinCopies = 8;
constexpr size_t kKernelMaxMeanBytes = size_t{1} << 20;
constexpr size_t kStagingQuantum = size_t{64} << 20;
constexpr size_t kStagingMax = size_t{4} << 30;

// Mirrors KvtierSegment in kernels.cu.
struct Segment {
  unsigned long long src;
  unsigned long long dst;
  unsigned long long len;
};
}  // namespace

Napi::Function CopyEngine::Define(Napi::Env env) {
  return DefineClass(
      env, "NativeCopyEngine",
      {InstanceMethod<&CopyEngine::Submit>("submit"), InstanceMethod<&CopyEngine::Close>("close"),
       InstanceAccessor<&CopyEngine::Kind>("kind"),
       InstanceAccessor<&CopyEngine::QueueDepth>("queueDepth"),
       InstanceAccessor<&CopyEngine::InFlight>("inFlight"),
       InstanceAccessor<&CopyEngine::BatchCopy>("batchCopy"),
       InstanceAccessor<&CopyEngine::KernelPath>("kernelPath"),
       InstanceMethod<&CopyEngine::Decode>("decode"),
       InstanceAccessor<&CopyEngine::DecodePath>("decodePath")});
}

// new NativeCopyEngine({ device, streams, batch, kernel, decodeStagingBytes })
CopyEngine::CopyEngine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CopyEngine>(info) {
  Napi::Env env = info.Env();
  Napi::Object opts = info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(env);
  Napi::Value dv = opts.Get("device");
  uint64_t device = dv.IsUndefined() ? 0 : ByteCountArg(env, dv, "device");
  Napi::Value sv = opts.Get("streams");
  uint64_t streams = sv.IsUndefined() ? 2 : ByteCountArg(env, sv, "streams");
  if (streams < 1 || streams > 64) Throw(env, kBadArgument, "streams must be between 1 and 64");
  if (device > 1024) Throw(env, kBadArgument, "device must be a CUDA device ordinal");
  device_ = static_cast<int>(device);
  useBatch_ = BoolOption(opts, "batch", true);
  useKernel_ = BoolOption(opts, "kernel", true);
  Napi::Value ds = opts.Get("decodeStagingBytes");
  if (!ds.IsUndefined()) {
    decodeStaging_ = ByteCountArg(env, ds, "decodeStagingBytes");
    if (decodeStaging_ == 0) Throw(env, kBadArgument, "decodeStagingBytes must be at least 1");
  }

  Cuda& cuda = Cuda::instance();
  std::string why;
  api_ = cuda.gpu(&why);
  if (api_ == nullptr || !cuda.makeCurrent(device_, &why)) Throw(env, kNotAvailable, why);
  for (uint64_t i = 0; i < streams; ++i) {
    cu::Stream s = nullptr;
    cu::Result rc = api_->streamCreate(&s, cu::kStreamNonBlocking);
    if (rc != cu::kSuccess) {
      for (Lane& made : lanes_) (void)api_->streamDestroy(made.stream);
      lanes_.clear();
      Throw(env, kNotAvailable, cuda.fail("cuStreamCreate", rc));
    }
    lanes_.push_back(Lane{s});
  }
  LoadKernel();
  // An idle engine must not keep the process alive; submit() holds it while batches are out.
  life_.Begin(env, Tsfn::New(env, "kvtier-gpu-copy", 0, 1, this), [this] { StopWork(); });
  try {
    completer_ = std::thread([this] { Complete(); });
  } catch (const std::exception& e) {
    life_.Shutdown();  // frees the streams made above
    Throw(env, kNotAvailable, std::string("cannot start the GPU completion thread: ") + e.what());
  }
}

CopyEngine::~CopyEngine() { life_.Shutdown(); }

void CopyEngine::StopWork() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  // The completer finishes every queued batch first: the DMA engines hold their buffers until then.
  if (completer_.joinable()) completer_.join();
  std::string why;
  if (Cuda::instance().makeCurrent(device_, &why)) {
    for (Lane& lane : lanes_) {
      (void)api_->streamDestroy(lane.stream);
      if (lane.staging != 0) (void)api_->memFree(lane.staging);
    }
    for (cu::Event e : spareEvents_) (void)api_->eventDestroy(e);
    for (auto& table : spareTables_) (void)api_->memFreeHost(table.first);
    if (module_ != nullptr && api_->moduleUnload != nullptr) (void)api_->moduleUnload(module_);
  }
  lanes_.clear();
  spareEvents_.clear();
  spareTables_.clear();
  module_ = nullptr;
  kernel_ = nullptr;
}

void CopyEngine::Complete() {
  std::string why;
  bool current = Cuda::instance().makeCurrent(device_, &why);
  for (;;) {
    JsBatch* batch = nullptr;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !pending_.empty(); });
      if (pending_.empty()) return;
      batch = pending_.front();
      pending_.pop_front();
    }
    if (!current) {
      batch->error = why;
    } else if (batch->deferredOn != nullptr) {
      batch->rc = Dma(batch->dsts, batch->srcs, batch->sizes, batch->deferredOn);
      if (batch->rc == cu::kSuccess) batch->rc = api_->eventRecord(batch->event, batch->deferredOn);
      // Copies queued before a failure still run; they must end before the memory is let go.
      batch->rc = batch->rc == cu::kSuccess
                      ? api_->eventSynchronize(batch->event)
                      : (api_->streamSynchronize(batch->deferredOn), batch->rc);
    } else {
      batch->rc = api_->eventSynchronize(batch->event);
    }

    if (life_.tsfn().NonBlockingCall(batch) != napi_ok) {
      // Only during environment teardown: nobody is left to resolve. The memory is let go here;
      // the references die with the environment.
      batch->borrowed.clear();
      delete batch;
    }
  }
}

void CopyEngine::Deliver(Napi::Env env, Napi::Function, CopyEngine* engine, JsBatch* raw) {
  std::unique_ptr<JsBatch> batch(raw);
  if (env == nullptr) {
    batch->borrowed.clear();
    return;
  }
  ReleaseTargets(env, &batch->borrowed);
  batch->borrowed.clear();
  batch->keepAlive.clear();
  if (engine->life_.closed()) {
    // Shut down already: nothing will reuse them, and the pools were freed.
    std::string why;
    if (Cuda::instance().makeCurrent(engine->device_, &why)) {
      if (batch->event != nullptr) (void)engine->api_->eventDestroy(batch->event);
      if (batch->table != nullptr) (void)engine->api_->memFreeHost(batch->table);
    }
  } else {
    if (batch->event != nullptr) engine->spareEvents_.push_back(batch->event);
    if (batch->table != nullptr) {
      engine->spareTables_.emplace_back(batch->table, batch->tableBytes);
    }
  }
  if (!batch->error.empty()) {
    batch->deferred.Reject(MakeError(env, kIo, batch->error).Value());
  } else if (batch->rc != cu::kSuccess) {
    batch->deferred.Reject(
        MakeError(env, kIo, Cuda::instance().fail("a GPU copy", batch->rc)).Value());
  } else {
    Napi::Float64Array results = Napi::Float64Array::New(env, batch->results.size());
    for (size_t i = 0; i < batch->results.size(); ++i) results[i] = batch->results[i];
    batch->deferred.Resolve(results);
  }
  engine->life_.Idle(env);
  engine->Unref();
}

void CopyEngine::LoadKernel() {
  if (api_->moduleLoadData == nullptr || api_->moduleGetFunction == nullptr ||
      api_->launchKernel == nullptr || api_->memHostGetDevicePointer == nullptr) {
    kernelReason_ =
        "the driver lacks cuModuleLoadData, cuLaunchKernel or cuMemHostGetDevicePointer";
    decodeReason_ = kernelReason_;
    return;
  }
  cu::Result rc = api_->moduleLoadData(&module_, kKernelsPtx);
  if (rc != cu::kSuccess) {
    // An older driver cannot JIT newer PTX: copies still run, on the DMA path alone.
    kernelReason_ = Cuda::instance().fail("loading kvtier's GPU kernels", rc);
    decodeReason_ = kernelReason_;
    module_ = nullptr;
    return;
  }
  // The decoders load whatever the segment-copy option says: they are not an alternative path.
  static const char* const kDecoders[3] = {"kvtier_decode_fp8", "kvtier_decode_int8",
                                           "kvtier_decode_kivi"};
  for (int i = 0; i < 3; ++i) {
    rc = api_->moduleGetFunction(&decodeKernels_[i], module_, kDecoders[i]);
    if (rc != cu::kSuccess) {
      decodeReason_ = Cuda::instance().fail((std::string("loading ") + kDecoders[i]).c_str(), rc);
      for (cu::Function& f : decodeKernels_) f = nullptr;
      break;
    }
  }
  if (!useKernel_) {
    kernelReason_ = "the kernel path was turned off";
    return;
  }
  rc = api_->moduleGetFunction(&kernel_, module_, "kvtier_copy_segments");
  if (rc != cu::kSuccess) {
    kernelReason_ = Cuda::instance().fail("loading kvtier's segment-copy kernel", rc);
    kernel_ = nullptr;
  }
}

cu::Result CopyEngine::Dma(std::vector<cu::DevicePtr>& dsts, std::vector<cu::DevicePtr>& srcs,
                           std::vector<size_t>& sizes, cu::Stream stream) {
  size_t n = sizes.size();
  cu::Result rc = cu::kSuccess;
  if (n > 1 && useBatch_ &&
      (api_->memcpyBatchAsync != nullptr || api_->memcpyBatchAsync128 != nullptr)) {
    // One driver call for the whole list: the per-copy launch cost is what limits lists of many
    // small pieces.
    cu::MemcpyAttributes attrs{};
    attrs.srcAccessOrder = cu::kSrcAccessOrderStream;
    size_t attrIdx = 0;
    if (api_->memcpyBatchAsync != nullptr) {
      rc = api_->memcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), n, &attrs, &attrIdx, 1,
                                  stream);
    } else {
      size_t failIdx = 0;
      rc = api_->memcpyBatchAsync128(dsts.data(), srcs.data(), sizes.data(), n, &attrs, &attrIdx, 1,
                                     &failIdx, stream);
    }
    if (rc == cu::kSuccess) return rc;
    // Some memory kinds (pageable host memory on some drivers) are refused by the batch call;
    // copies one by one take them all. Repeating a copy the driver may have queued is harmless.
  }
  for (size_t i = 0; i < n; ++i) {
    rc = api_->memcpyAsync(dsts[i], srcs[i], sizes[i], stream);
    if (rc != cu::kSuccess) return rc;
  }
  return cu::kSuccess;
}

bool CopyEngine::EnsureStaging(Lane& lane, size_t bytes) {
  if (bytes <= lane.stagingBytes) return true;
  // Earlier batches on this lane may still read the old buffer; the lane is stream-ordered, so
  // waiting for it is enough.
  size_t want = (bytes + kStagingQuantum - 1) / kStagingQuantum * kStagingQuantum;
  cu::DevicePtr fresh = 0;
  if (api_->streamSynchronize(lane.stream) != cu::kSuccess ||
      api_->memAlloc(&fresh, want) != cu::kSuccess) {
    return false;
  }
  if (lane.staging != 0) (void)api_->memFree(lane.staging);
  lane.staging = fresh;
  lane.stagingBytes = want;
  return true;
}

bool CopyEngine::EnqueueStaged(JsBatch* batch, Lane& lane, std::string* error) {
  size_t n = batch->sizes.size();
  if (kernel_ == nullptr || n < kKernelMinCopies) return false;
  size_t total = 0;
  size_t staged = 0;
  for (size_t i = 0; i < n; ++i) {
    total += batch->sizes[i];
    // Host-to-host copies stay on DMA; every copy touching the host goes through staging.
    if (batch->dstDevice[i] != batch->srcDevice[i]) staged += (batch->sizes[i] + 15) & ~size_t{15};
  }
  if (total / n > kKernelMaxMeanBytes || staged > kStagingMax) return false;

  Cuda& cuda = Cuda::instance();
  if (!EnsureStaging(lane, staged)) return false;  // no room in HBM: the DMA path needs none
  size_t tableBytes = n * sizeof(Segment);
  for (size_t i = 0; i < spareTables_.size(); ++i) {
    if (spareTables_[i].second >= tableBytes) {
      batch->table = spareTables_[i].first;
      batch->tableBytes = spareTables_[i].second;
      spareTables_.erase(spareTables_.begin() + static_cast<std::ptrdiff_t>(i));
      break;
    }
  }
  if (batch->table == nullptr) {
    size_t bytes = std::max<size_t>(tableBytes, 64 << 10);
    if (api_->memHostAlloc(&batch->table, bytes,
                           cu::kMemHostAllocPortable | cu::kMemHostAllocDeviceMap) !=
        cu::kSuccess) {
      batch->table = nullptr;
      return false;
    }
    batch->tableBytes = bytes;
  }
  cu::DevicePtr tableOnDevice = 0;
  if (api_->memHostGetDevicePointer(&tableOnDevice, batch->table, 0) != cu::kSuccess) {
    return false;  // the table goes back to the pool on delivery
  }

  // Staging holds the host side of every staged copy, in batch order: host pieces that are
  // adjacent stay adjacent there, so their DMA copies merge.
  auto* segments = static_cast<Segment*>(batch->table);
  std::vector<cu::DevicePtr> upDst, upSrc, downDst, downSrc;
  std::vector<size_t> upLen, downLen;
  auto add = [](std::vector<cu::DevicePtr>& d, std::vector<cu::DevicePtr>& s,
                std::vector<size_t>& l, cu::DevicePtr dst, cu::DevicePtr src, size_t len) {
    if (!l.empty() && d.back() + l.back() == dst && s.back() + l.back() == src) {
      l.back() += len;
    } else {
      d.push_back(dst);
      s.push_back(src);
      l.push_back(len);
    }
  };
  size_t at = 0;
  for (size_t i = 0; i < n; ++i) {
    cu::DevicePtr dst = batch->dsts[i];
    cu::DevicePtr src = batch->srcs[i];
    size_t len = batch->sizes[i];
    Segment& seg = segments[i];
    seg.len = len;
    if (batch->dstDevice[i] && batch->srcDevice[i]) {
      seg.src = src;
      seg.dst = dst;
    } else if (batch->dstDevice[i]) {  // host to device: DMA up into staging, kernel scatters
      add(upDst, upSrc, upLen, lane.staging + at, src, len);
      seg.src = lane.staging + at;
      seg.dst = dst;
    } else if (batch->srcDevice[i]) {  // device to host: kernel gathers, DMA down from staging
      seg.src = src;
      seg.dst = lane.staging + at;
      add(downDst, downSrc, downLen, dst, lane.staging + at, len);
    } else {  // host to host: DMA alone; the kernel skips it
      add(upDst, upSrc, upLen, dst, src, len);
      seg.len = 0;
    }
    if (batch->dstDevice[i] != batch->srcDevice[i]) at += (len + 15) & ~size_t{15};
  }
  cu::Result rc = upLen.empty() ? cu::kSuccess : Dma(upDst, upSrc, upLen, lane.stream);
  if (rc != cu::kSuccess) {
    *error = cuda.fail("cuMemcpyAsync (to staging)", rc);
    return true;
  }
  unsigned count = static_cast<unsigned>(n);
  void* params[] = {&tableOnDevice, &count};
  unsigned grid = static_cast<unsigned>(std::min<size_t>(n, 4096));
  rc = api_->launchKernel(kernel_, grid, 1, 1, 256, 1, 1, 0, lane.stream, params, nullptr);
  if (rc != cu::kSuccess) {
    *error = cuda.fail("cuLaunchKernel (segment copy)", rc);
    return true;
  }
  rc = downLen.empty() ? cu::kSuccess : Dma(downDst, downSrc, downLen, lane.stream);
  if (rc != cu::kSuccess) *error = cuda.fail("cuMemcpyAsync (from staging)", rc);
  return true;
}

std::string CopyEngine::Enqueue(JsBatch* batch, Lane& lane) {
  std::string error;
  if (EnqueueStaged(batch, lane, &error)) return error;
  cu::Result rc = Dma(batch->dsts, batch->srcs, batch->sizes, lane.stream);
  return rc == cu::kSuccess ? "" : Cuda::instance().fail("cuMemcpyAsync", rc);
}

// submit(descriptors: Float64Array, targets: (NativeRegion | NativeDeviceRegion | buffer)[],
//        files: unused) -> Promise<Float64Array>
// Every descriptor is a copy (op 3): target, target offset, length, source index, source offset.
// Each result is the bytes copied; a CUDA failure rejects the whole batch, since a stream error
// leaves no way to tell which copies landed.
Napi::Value CopyEngine::Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (life_.closed()) Throw(env, kClosed, "GPU copy engine is closed");
  BatchArgs args = ReadBatchArgs(info, false);
  Napi::Float64Array descs = args.descs;
  size_t count = args.count;
  const std::vector<Target>& targets = args.targets;

  for (size_t i = 0; i < targets.size(); ++i) {
    if (targets[i].device && targets[i].device->device() != device_) {
      // The kernel path would dereference memory of a GPU it has no access to.
      Throw(env, kBadArgument,
            "target " + std::to_string(i) + " is memory of device " +
                std::to_string(targets[i].device->device()) + "; this engine copies on device " +
                std::to_string(device_));
    }
  }
  auto batch = std::make_unique<JsBatch>(env);
  batch->results.assign(count, 0);
  bool anyPageable = false;
  const double* d = descs.Data();
  for (size_t i = 0; i < count; ++i, d += kStride) {
    if (d[kOp] != kCopyOp) {
      Throw(env, kBadArgument,
            Where(i) + "a GPU copy engine runs copies (op 3) without checksums, nothing else");
    }
    uint64_t len = 0;
    const Target* to = nullptr;
    const Target* from = nullptr;
    uint8_t* dst = TargetRange(env, targets, d, i, kTarget, kTargetOffset, "target", &len, &to);
    uint8_t* src = TargetRange(env, targets, d, i, kFile, kFileOffset, "source", &len, &from);
    batch->results[i] = static_cast<double>(len);
    if (len == 0) continue;
    batch->dsts.push_back(reinterpret_cast<cu::DevicePtr>(dst));
    batch->srcs.push_back(reinterpret_cast<cu::DevicePtr>(src));
    batch->sizes.push_back(len);
    batch->dstDevice.push_back(to->device ? 1 : 0);
    batch->srcDevice.push_back(from->device ? 1 : 0);
    auto pageable = [](const Target* t) {
      return !t->device && !(t->memory && t->memory->pinned());
    };
    if ((to->device || from->device) && (pageable(to) || pageable(from))) anyPageable = true;
  }
  Napi::Promise promise = batch->deferred.Promise();
  if (batch->sizes.empty()) {
    batch->deferred.Resolve(Napi::Float64Array::New(env, count));
    return promise;
  }

  Cuda& cuda = Cuda::instance();
  MakeReady(env);
  HoldTargets(env, targets, &batch->borrowed, &batch->keepAlive);
  auto refuse = [&](const std::string& message) {
    ReleaseTargets(env, &batch->borrowed);
    Throw(env, kIo, message);
  };
  Lane& lane = lanes_[nextStream_++ % lanes_.size()];
  cu::Stream stream = lane.stream;
  if (anyPageable) {
    batch->deferredOn = stream;
    batch->event = spareEvents_.back();
    spareEvents_.pop_back();
    life_.Busy(env);
    Ref();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      pending_.push_back(batch.release());
    }
    wake_.notify_one();
    return promise;
  }
  std::string failed = Enqueue(batch.get(), lane);
  if (!failed.empty()) {
    // Copies queued before the failure still run; wait for them so no buffer is let go early.
    (void)api_->streamSynchronize(stream);
    if (batch->table != nullptr) spareTables_.emplace_back(batch->table, batch->tableBytes);
    batch->table = nullptr;
    refuse(failed);
  }
  batch->event = spareEvents_.back();
  spareEvents_.pop_back();
  cu::Result rc = api_->eventRecord(batch->event, stream);
  if (rc != cu::kSuccess) {
    spareEvents_.push_back(batch->event);
    (void)api_->streamSynchronize(stream);
    if (batch->table != nullptr) spareTables_.emplace_back(batch->table, batch->tableBytes);
    batch->table = nullptr;
    refuse(cuda.fail("cuEventRecord", rc));
  }
  HandOff(env, std::move(batch));
  return promise;
}

// Makes the engine's device current and keeps one completion event spare, before a batch queues
// anything: a failure here throws with nothing queued.
void CopyEngine::MakeReady(Napi::Env env) {
  Cuda& cuda = Cuda::instance();
  std::string why;
  if (!cuda.makeCurrent(device_, &why)) Throw(env, kNotAvailable, why);
  if (spareEvents_.empty()) {
    cu::Event e = nullptr;
    cu::Result rc = api_->eventCreate(&e, cu::kEventDisableTiming);
    if (rc != cu::kSuccess) Throw(env, kIo, cuda.fail("cuEventCreate", rc));
    spareEvents_.push_back(e);
  }
}

// Hands a batch whose work is queued on its stream to the completion thread.
void CopyEngine::HandOff(Napi::Env env, std::unique_ptr<JsBatch> batch) {
  life_.Busy(env);
  Ref();  // the JS engine object stays alive while its batches are out
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_.push_back(batch.release());
  }
  wake_.notify_one();
}

Napi::Value CopyEngine::Close(const Napi::CallbackInfo& info) {
  life_.Shutdown();
  return info.Env().Undefined();
}

Napi::Value CopyEngine::Kind(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), "cuda");
}

Napi::Value CopyEngine::QueueDepth(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(lanes_.size()));
}

Napi::Value CopyEngine::InFlight(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(life_.busy()));
}

// kernelPath: '' when small-piece gathers and scatters go through the kernel, else why not.
Napi::Value CopyEngine::KernelPath(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), kernel_ != nullptr ? "" : kernelReason_);
}

Napi::Value CopyEngine::BatchCopy(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), useBatch_ && Cuda::instance().batchCopy());
}

}  // namespace kvtier
