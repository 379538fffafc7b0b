#include "gpu_file_engine.h"

#include <unistd.h>

#include <cerrno>
#include <exception>
#include <utility>

#include "../common/descriptors.h"
#include "../common/errors.h"
#include "../common/targets.h"
#include "../io/file_handle.h"
#include "../shim/cuda.h"
#include "../shim/cufile.h"
#include "device_memory.h"

namespace kvtier {

namespace cu = shim::cu;
using shim::Cuda;
using shim::CuFile;

namespace {
constexpr int kRead = 0;
constexpr int kWrite = 1;
constexpr int kSync = 2;
}  // namespace

struct GpuFileEngine::Op {
  int code = kRead;
  uint8_t* mem = nullptr;  // host address, or device address when device is set
  uint64_t len = 0;
  uint64_t offset = 0;  // in the file
  std::shared_ptr<FileHandle> file;
  int fd = -1;
  DeviceMemory* device = nullptr;  // kept alive by the batch
  double result = 0;               // bytes, or -errno
  std::string error;               // what failed, where errno alone does not say
  JsBatch* batch = nullptr;
};

struct GpuFileEngine::JsBatch {
  explicit JsBatch(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise::Deferred deferred;
  std::vector<napi_ref> borrowed;
  std::vector<std::shared_ptr<void>> keepAlive;
  std::vector<Op> ops;
  std::atomic<size_t> remaining{0};
};

// One engine thread's own CUDA stream, completion events and pinned bounce buffers (POSIX path).
struct GpuFileEngine::Worker {
  const cu::Api* api = nullptr;
  cu::Stream stream = nullptr;
  cu::Event events[2] = {nullptr, nullptr};
  void* bounce[2] = {nullptr, nullptr};
  std::string failed;  // why this worker could not set up; its ops fail with it

  ~Worker() {
    if (api == nullptr) return;
    for (void* b : bounce) {
      if (b != nullptr) (void)api->memFreeHost(b);
    }
    for (cu::Event e : events) {
      if (e != nullptr) (void)api->eventDestroy(e);
    }
    if (stream != nullptr) (void)api->streamDestroy(stream);
  }
};

Napi::Function GpuFileEngine::Define(Napi::Env env) {
  return DefineClass(env, "NativeGpuFileEngine",
                     {InstanceMethod<&GpuFileEngine::Submit>("submit"),
                      InstanceMethod<&GpuFileEngine::Close>("close"),
                      InstanceAccessor<&GpuFileEngine::Kind>("kind"),
                      InstanceAccessor<&GpuFileEngine::QueueDepth>("queueDepth"),
                      InstanceAccessor<&GpuFileEngine::InFlight>("inFlight"),
                      InstanceAccessor<&GpuFileEngine::Fallbacks>("fallbacks")});
}

// new NativeGpuFileEngine({ device, io: 'cufile' | 'posix', threads, chunkBytes, fallback })
// fallback: ops on files cuFile will not register take the POSIX path instead of failing.
GpuFileEngine::GpuFileEngine(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<GpuFileEngine>(info) {
  Napi::Env env = info.Env();
  Napi::Object opts = info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(env);
  Napi::Value dv = opts.Get("device");
  uint64_t device = dv.IsUndefined() ? 0 : ByteCountArg(env, dv, "device");
  if (device > 1024) Throw(env, kBadArgument, "device must be a CUDA device ordinal");
  device_ = static_cast<int>(device);
  std::string io = StringOption(opts, "io", "posix");
  if (io != "cufile" && io != "posix") {
    Throw(env, kBadArgument, "io must be 'cufile' or 'posix', got '" + io + "'");
  }
  cufile_ = io == "cufile";
  fallback_ = BoolOption(opts, "fallback", false);
  Napi::Value tv = opts.Get("threads");
  uint64_t threads = tv.IsUndefined() ? 4 : ByteCountArg(env, tv, "threads");
  if (threads < 1 || threads > 256) Throw(env, kBadArgument, "threads must be between 1 and 256");
  Napi::Value cv = opts.Get("chunkBytes");
  uint64_t chunk = cv.IsUndefined() ? (uint64_t{4} << 20) : ByteCountArg(env, cv, "chunkBytes");
  if (chunk < 4096 || chunk % 4096 != 0 || chunk > (uint64_t{1} << 30)) {
    Throw(env, kBadArgument, "chunkBytes must be a multiple of 4096 between 4 KiB and 1 GiB");
  }
  chunkBytes_ = chunk;

  Cuda& cuda = Cuda::instance();
  std::string why;
  api_ = cuda.gpu(&why);
  if (api_ == nullptr || !cuda.makeCurrent(device_, &why)) Throw(env, kNotAvailable, why);
  if (cufile_ && !CuFile::instance().driverOpen(&why)) Throw(env, kNotAvailable, why);

  life_.Begin(env, Tsfn::New(env, "kvtier-gpu-file", 0, 1, this), [this] { StopWork(); });
  try {
    for (uint64_t i = 0; i < threads; ++i) workers_.push_back(std::make_unique<Worker>());
    for (auto& w : workers_) threads_.emplace_back([this, worker = w.get()] { Work(worker); });
  } catch (const std::exception& e) {
    life_.Shutdown();  // joins the threads that did start
    Throw(env, kNotAvailable, std::string("cannot start GPU file threads: ") + e.what());
  }
}

GpuFileEngine::~GpuFileEngine() { life_.Shutdown(); }

void GpuFileEngine::StopWork() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  // Workers drain the queue before they exit, so every submitted op finishes.
  for (std::thread& t : threads_) t.join();
  threads_.clear();
  std::string why;
  if (Cuda::instance().makeCurrent(device_, &why)) workers_.clear();
}

void GpuFileEngine::Work(Worker* w) {
  std::string why;
  if (!Cuda::instance().makeCurrent(device_, &why)) {
    w->failed = why;
  } else {
    w->api = api_;
    cu::Result rc = api_->streamCreate(&w->stream, cu::kStreamNonBlocking);
    for (int i = 0; i < 2 && rc == cu::kSuccess; ++i) {
      rc = api_->eventCreate(&w->events[i], cu::kEventDisableTiming);
    }
    if (rc != cu::kSuccess) w->failed = Cuda::instance().fail("setting up a GPU file thread", rc);
  }
  for (;;) {
    Op* op = nullptr;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      op = queue_.front();
      queue_.pop_front();
    }
    if (!w->failed.empty()) {
      op->result = -EIO;
      op->error = w->failed;
    } else {
      // No exception may leave this thread: one (an allocation failing) fails the op instead.
      try {
        Run(op, w);
      } catch (const std::exception& e) {
        (void)api_->streamSynchronize(w->stream);
        op->result = -ENOMEM;
      }
    }
    JsBatch* batch = op->batch;
    if (batch->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      if (life_.tsfn().NonBlockingCall(batch) != napi_ok) {
        batch->borrowed.clear();
        delete batch;
      }
    }
  }
}

namespace {

// pread/pwrite of the whole range, retried on EINTR and short transfers; returns bytes or -errno.
// A read stops early only at end of file.
ssize_t FullIo(bool write, int fd, void* buf, size_t len, uint64_t offset) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = write ? pwrite(fd, static_cast<uint8_t*>(buf) + done, len - done,
                               static_cast<off_t>(offset + done))
                      : pread(fd, static_cast<uint8_t*>(buf) + done, len - done,
                              static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

}  // namespace

void GpuFileEngine::Run(Op* op, Worker* w) {
  if (op->code == kSync) {
    op->result = fdatasync(op->fd) == 0 ? 0 : -errno;
    return;
  }
  bool write = op->code == kWrite;
  if (op->device == nullptr) {
    // Host memory needs no GPU at all.
    ssize_t n = FullIo(write, op->fd, op->mem, op->len, op->offset);
    op->result = static_cast<double>(n);
    return;
  }
  void* handle = nullptr;
  if (cufile_) {
    {
      std::lock_guard<std::mutex> lock(op->file->cufileMutex);
      std::string why;
      if (op->file->cufile == nullptr && op->file->cufileRefused.empty()) {
        if (!CuFile::instance().handleRegister(op->file->fd, &op->file->cufile, &why)) {
          // Asked once per file: a refusal (an unsupported file system) does not change.
          op->file->cufile = nullptr;
          op->file->cufileRefused = why;
        }
      }
      handle = op->file->cufile;
      if (handle == nullptr) op->error = op->file->cufileRefused;
    }
    if (handle == nullptr && !fallback_) {
      op->result = -EIO;
      return;
    }
  }
  if (handle != nullptr) {
    // Registered buffers let GPUDirect DMA straight into them; compat mode ignores it.
    bool registered = op->device->registerWithCuFile();
    void* base = registered ? reinterpret_cast<void*>(op->device->ptr()) : op->mem;
    off_t devOffset =
        registered
            ? static_cast<off_t>(reinterpret_cast<cu::DevicePtr>(op->mem) - op->device->ptr())
            : 0;
    std::string why;
    size_t done = 0;
    while (done < op->len) {
      ssize_t n = write ? CuFile::instance().write(handle, base, op->len - done,
                                                   static_cast<off_t>(op->offset + done),
                                                   devOffset + static_cast<off_t>(done), &why)
                        : CuFile::instance().read(handle, base, op->len - done,
                                                  static_cast<off_t>(op->offset + done),
                                                  devOffset + static_cast<off_t>(done), &why);
      if (n < 0) {
        op->result = static_cast<double>(n);
        op->error = why;
        return;
      }
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    op->result = static_cast<double>(done);
    return;
  }

  if (cufile_) {
    // io: 'auto' and cuFile refused this file (it classifies the file system through udev, which
    // some machines lack): the POSIX path serves it, and stats() counts it.
    fallbacks_.fetch_add(1, std::memory_order_relaxed);
    op->error.clear();
  }
  // POSIX through pinned bounce buffers: while the DMA engine copies one chunk, this thread reads
  // (or writes) the other.
  for (int i = 0; i < 2; ++i) {
    if (w->bounce[i] == nullptr) {
      cu::Result rc = api_->memHostAlloc(&w->bounce[i], chunkBytes_, cu::kMemHostAllocPortable);
      if (rc != cu::kSuccess) {
        w->bounce[i] = nullptr;
        op->result = -ENOMEM;
        return;
      }
    }
  }
  auto dev = [&](uint64_t at) { return reinterpret_cast<cu::DevicePtr>(op->mem + at); };
  auto host = [&](int k) { return reinterpret_cast<cu::DevicePtr>(w->bounce[k]); };
  uint64_t done = 0;
  bool busy[2] = {false, false};
  auto settle = [&](int k) -> bool {
    if (!busy[k]) return true;
    busy[k] = false;
    return api_->eventSynchronize(w->events[k]) == cu::kSuccess;
  };
  if (!write) {
    int k = 0;
    while (done < op->len) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(chunkBytes_, op->len - done));
      if (!settle(k)) {
        // The other buffer's copy may still be landing in this op's memory.
        (void)api_->streamSynchronize(w->stream);
        op->result = -EIO;
        return;
      }
      ssize_t got = FullIo(false, op->fd, w->bounce[k], n, op->offset + done);
      if (got < 0) {
        (void)api_->streamSynchronize(w->stream);
        op->result = static_cast<double>(got);
        return;
      }
      if (got > 0) {
        if (api_->memcpyAsync(dev(done), host(k), static_cast<size_t>(got), w->stream) !=
                cu::kSuccess ||
            api_->eventRecord(w->events[k], w->stream) != cu::kSuccess) {
          (void)api_->streamSynchronize(w->stream);
          op->result = -EIO;
          return;
        }
        busy[k] = true;
      }
      done += static_cast<uint64_t>(got);
      if (static_cast<size_t>(got) < n) break;  // end of file
      k ^= 1;
    }
    bool ok = api_->streamSynchronize(w->stream) == cu::kSuccess;
    busy[0] = busy[1] = false;
    op->result = ok ? static_cast<double>(done) : -EIO;
    return;
  }
  // Writes: copy chunk i+1 down while chunk i goes to the file.
  auto stage = [&](uint64_t at, int k) -> bool {
    size_t n = static_cast<size_t>(std::min<uint64_t>(chunkBytes_, op->len - at));
    busy[k] = true;
    return api_->memcpyAsync(host(k), dev(at), n, w->stream) == cu::kSuccess &&
           api_->eventRecord(w->events[k], w->stream) == cu::kSuccess;
  };
  int k = 0;
  bool ok = stage(0, 0);
  while (ok && done < op->len) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(chunkBytes_, op->len - done));
    if (done + n < op->len) ok = stage(done + n, k ^ 1);
    if (!ok || !settle(k)) {
      ok = false;
      break;
    }
    ssize_t put = FullIo(true, op->fd, w->bounce[k], n, op->offset + done);
    if (put < 0) {
      (void)api_->streamSynchronize(w->stream);
      op->result = static_cast<double>(put);
      return;
    }
    done += static_cast<uint64_t>(put);
    k ^= 1;
  }
  (void)api_->streamSynchronize(w->stream);
  op->result = ok ? static_cast<double>(done) : -EIO;
}

void GpuFileEngine::Deliver(Napi::Env env, Napi::Function, GpuFileEngine* engine, JsBatch* raw) {
  std::unique_ptr<JsBatch> batch(raw);
  if (env == nullptr) {
    batch->borrowed.clear();
    return;
  }
  Napi::Float64Array results = Napi::Float64Array::New(env, batch->ops.size());
  Napi::Array messages = Napi::Array::New(env);
  for (size_t i = 0; i < batch->ops.size(); ++i) {
    results[i] = batch->ops[i].result;
    if (!batch->ops[i].error.empty()) {
      messages.Set(static_cast<uint32_t>(i), Napi::String::New(env, batch->ops[i].error));
    }
  }
  // Why an op failed, where the errno alone does not say (cuFile's own error codes).
  results.Set("messages", messages);
  ReleaseTargets(env, &batch->borrowed);
  batch->borrowed.clear();
  batch->ops.clear();
  batch->keepAlive.clear();
  batch->deferred.Resolve(results);
  engine->life_.Idle(env);
  engine->Unref();
}

// submit(descriptors: Float64Array, targets: (NativeDeviceRegion | NativeRegion | buffer)[],
//        files: NativeFile[]) -> Promise<Float64Array>
// Ops 0 (read), 1 (write), 2 (sync). Each result is the bytes moved (short only at end of file)
// or -errno.
Napi::Value GpuFileEngine::Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (life_.closed()) Throw(env, kClosed, "GPU file engine is closed");
  BatchArgs args = ReadBatchArgs(info, true);
  Napi::Float64Array descs = args.descs;
  size_t count = args.count;
  const std::vector<Target>& targets = args.targets;
  const std::vector<std::shared_ptr<FileHandle>>& files = args.files;

  auto batch = std::make_unique<JsBatch>(env);
  batch->ops.resize(count);
  const double* d = descs.Data();
  size_t queued = 0;
  for (size_t i = 0; i < count; ++i, d += kStride) {
    Op& op = batch->ops[i];
    op.batch = batch.get();
    int code = d[kOp] == 0 ? kRead : d[kOp] == 1 ? kWrite : d[kOp] == 2 ? kSync : -1;
    if (code != kRead && code != kWrite && code != kSync) {
      Throw(env, kBadArgument,
            Where(i) + "a GPU file engine runs reads (0), writes (1) and syncs (2), nothing else");
    }
    op.code = code;
    double fi = d[kFile];
    if (!IsByteCount(fi) || fi >= static_cast<double>(files.size())) {
      Throw(env, kBadArgument, Where(i) + "file index out of range");
    }
    op.file = files[static_cast<size_t>(fi)];
    op.fd = op.file->fd;
    if (op.code == kSync) {
      ++queued;
      continue;
    }
    if (op.code == kWrite && op.file->readOnly) {
      Throw(env, kBadArgument,
            Where(i) + "cannot write to " + op.file->path + ": opened read-only");
    }
    op.offset = Field64(env, d, i, kFileOffset, "file offset");
    const Target* target = nullptr;
    op.mem = TargetRange(env, targets, d, i, kTarget, kTargetOffset, "target", &op.len, &target);
    op.device = target->device.get();
    if (op.device != nullptr && op.device->device() != device_) {
      Throw(env, kBadArgument,
            Where(i) + "target is memory of device " + std::to_string(op.device->device()) +
                "; this engine works on device " + std::to_string(device_));
    }
    // The POSIX path reads whole chunks into page-aligned bounce buffers; an O_DIRECT file still
    // needs aligned offsets and lengths, which cuFile handles itself.
    bool bounced = op.device != nullptr && (!cufile_ || fallback_);
    if (op.file->direct && (bounced || op.device == nullptr) &&
        (op.offset % op.file->offsetAlign != 0 || op.len % op.file->offsetAlign != 0 ||
         (op.device == nullptr && reinterpret_cast<uintptr_t>(op.mem) % op.file->memAlign != 0))) {
      if (op.file->bufferedFd < 0) {
        Throw(env, kBadArgument,
              Where(i) + "O_DIRECT on " + op.file->path + " needs offsets and lengths in " +
                  "multiples of " + std::to_string(op.file->offsetAlign) +
                  " (open the file with direct: 'auto' to allow buffered I/O for such requests)");
      }
      op.fd = op.file->bufferedFd;
    }
    if (op.len > 0) ++queued;
  }
  HoldTargets(env, targets, &batch->borrowed, &batch->keepAlive);
  for (const auto& f : files) batch->keepAlive.push_back(f);

  Napi::Promise promise = batch->deferred.Promise();
  if (queued == 0) {
    ReleaseTargets(env, &batch->borrowed);
    batch->deferred.Resolve(Napi::Float64Array::New(env, count));
    return promise;
  }
  batch->remaining.store(queued, std::memory_order_relaxed);
  life_.Busy(env);
  Ref();
  JsBatch* raw = batch.release();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Op& op : raw->ops) {
      if (op.code == kSync || op.len > 0) queue_.push_back(&op);
    }
  }
  wake_.notify_all();
  return promise;
}

Napi::Value GpuFileEngine::Close(const Napi::CallbackInfo& info) {
  life_.Shutdown();
  return info.Env().Undefined();
}

Napi::Value GpuFileEngine::Kind(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), cufile_ ? "cufile" : "posix");
}

Napi::Value GpuFileEngine::QueueDepth(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(workers_.size()));
}

Napi::Value GpuFileEngine::Fallbacks(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(),
                           static_cast<double>(fallbacks_.load(std::memory_order_relaxed)));
}

Napi::Value GpuFileEngine::InFlight(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(life_.busy()));
}

}  // namespace kvtier
