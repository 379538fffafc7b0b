#include "engine.h"

#include <thread>
#include <utility>

#include "../common/args.h"
#include "../common/descriptors.h"
#include "../common/errors.h"
#include "../common/instance_data.h"
#include "../common/targets.h"
#include "file.h"

namespace kvtier {

namespace {

// Alignment of bounce buffers: a page satisfies every device's DMA alignment.
constexpr uint32_t kBounceAlign = 4096;

}  // namespace

struct Engine::JsBatch : Batch {
  explicit JsBatch(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise::Deferred deferred;
  std::vector<napi_ref> borrowed;  // user buffers, released on the main thread
  bool withCrc = false;            // results carry a second half of CRC-32C values
};

Napi::Function Engine::Define(Napi::Env env) {
  Napi::Function ctor = DefineClass(
      env, "NativeEngine",
      {InstanceMethod<&Engine::Submit>("submit"), InstanceMethod<&Engine::Close>("close"),
       InstanceAccessor<&Engine::Kind>("kind"), InstanceAccessor<&Engine::QueueDepth>("queueDepth"),
       InstanceAccessor<&Engine::InFlight>("inFlight")});
  InstanceData::Get(env).engineCtor = Napi::Persistent(ctor);
  return ctor;
}

// new NativeEngine({ kind: 'io_uring' | 'threads', queueDepth })
// queueDepth is the ring depth for io_uring and the thread count for the thread pool.
Engine::Engine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Engine>(info) {
  Napi::Env env = info.Env();
  Napi::Object opts = info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(env);
  kind_ = StringOption(opts, "kind", "threads");
  Napi::Value qd = opts.Get("queueDepth");
  uint64_t depth = qd.IsUndefined() ? 32 : ByteCountArg(env, qd, "queueDepth");
  if (depth < 1 || depth > 4096) Throw(env, kBadArgument, "queueDepth must be between 1 and 4096");
  queueDepth_ = static_cast<unsigned>(depth);

  if (kind_ == "threads") {
    io_ = NewThreadPoolEngine(queueDepth_);
  } else if (kind_ == "io_uring") {
    std::string reason;
    if (!UringUsable(&reason)) Throw(env, kNotAvailable, "io_uring is not usable: " + reason);
    io_ = NewUringEngine(queueDepth_);
  } else {
    Throw(env, kBadArgument, "engine kind must be 'io_uring' or 'threads', got '" + kind_ + "'");
  }
  std::string error;
  if (!io_->Start(&error)) {
    io_.reset();
    Throw(env, kNotAvailable, error);
  }
  // An idle engine must not keep the process alive; submit() holds it while batches are out.
  // Stopping finishes the I/O the kernel holds buffers for and joins the threads.
  life_.Begin(env, Tsfn::New(env, "kvtier-io", 0, 1, this), [this] {
    if (io_) io_->Stop();
  });
}

Engine::~Engine() { life_.Shutdown(); }

void Engine::Post(Batch* batch) {
  if (life_.tsfn().NonBlockingCall(batch) != napi_ok) {
    // Only during environment teardown: nobody is left to resolve. The files and memory are let
    // go here; the references die with the environment.
    auto* js = static_cast<JsBatch*>(batch);
    js->borrowed.clear();
    delete js;
  }
}

void Engine::Deliver(Napi::Env env, Napi::Function, Engine* engine, Batch* raw) {
  std::unique_ptr<JsBatch> batch(static_cast<JsBatch*>(raw));
  if (env == nullptr) {
    // The environment is gone (worker terminated, process exiting): nobody can be resolved, but
    // the files and memory the batch holds must still be let go. The references die with the
    // environment, so only the list is dropped.
    batch->borrowed.clear();
    return;
  }
  size_t n = batch->ops.size();
  Napi::Float64Array results = Napi::Float64Array::New(env, batch->withCrc ? 2 * n : n);
  for (size_t i = 0; i < n; ++i) {
    const Op& op = batch->ops[i];
    results[i] = op.err != 0 ? -static_cast<double>(op.err) : static_cast<double>(op.done);
    if (batch->withCrc) results[n + i] = op.crc;
  }
  ReleaseTargets(env, &batch->borrowed);
  batch->borrowed.clear();
  batch->keepAlive.clear();
  batch->deferred.Resolve(results);
  engine->Finished(env);
}

void Engine::Finished(Napi::Env env) {
  life_.Idle(env);
  Unref();
}

// submit(descriptors: Float64Array, targets: (NativeRegion | ArrayBufferView | ArrayBuffer)[],
//        files: NativeFile[]) -> Promise<Float64Array>
// Each result is the bytes transferred (short only at end of file) or -errno. When any descriptor
// asked for a checksum, the array is twice as long and its second half holds the CRC-32C values.
// Copy descriptors (op 3) name their source in the file index and file offset fields.
Napi::Value Engine::Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (life_.closed()) Throw(env, kClosed, "engine is closed");
  BatchArgs args = ReadBatchArgs(info, true);
  Napi::Float64Array descs = args.descs;
  size_t count = args.count;
  std::vector<Target>& targets = args.targets;
  std::vector<std::shared_ptr<FileHandle>>& files = args.files;
  for (size_t i = 0; i < targets.size(); ++i) {
    if (targets[i].device) {
      // These threads dereference host pointers; a device address would be a wild read.
      Throw(env, kBadArgument,
            "target " + std::to_string(i) +
                " is GPU memory; use a GPU copy engine or a GPU file engine for it");
    }
  }

  // Validate everything before queueing anything: a refused batch moves no byte.
  auto batch = std::make_unique<JsBatch>(env);
  batch->ops.resize(count);
  const double* d = descs.Data();
  size_t queued = 0;
  bool anyCrc = false;
  for (size_t i = 0; i < count; ++i, d += kStride) {
    Op& op = batch->ops[i];
    op.batch = batch.get();
    double opCode = d[kOp];
    int code = IsByteCount(opCode) && opCode < 64 ? static_cast<int>(opCode) : -1;
    int base = code & 0xf;
    if (code < 0 || (code & ~(0xf | kOpCrcFlag)) != 0 || base > 4) {
      Throw(env, kBadArgument,
            Where(i) + "op must be 0 (read), 1 (write), 2 (sync), 3 (copy) or 4 (checksum), " +
                "optionally with the checksum flag 16");
    }
    op.kind = static_cast<OpKind>(base);
    op.wantCrc = (code & kOpCrcFlag) != 0 || op.kind == OpKind::kChecksum;
    anyCrc = anyCrc || op.wantCrc;
    if (op.kind == OpKind::kCopy || op.kind == OpKind::kChecksum) {
      op.mem = TargetRange(env, targets, d, i, kTarget, kTargetOffset, "target", &op.len);
      if (op.kind == OpKind::kCopy) {
        uint64_t len = op.len;
        op.src = TargetRange(env, targets, d, i, kFile, kFileOffset, "source", &len);
      }
      if (op.len > 0) ++queued;
      continue;
    }
    double fi = d[kFile];
    if (!IsByteCount(fi) || fi >= static_cast<double>(files.size())) {
      Throw(env, kBadArgument, Where(i) + "file index out of range");
    }
    const FileHandle& file = *files[static_cast<size_t>(fi)];
    op.fd = file.fd;
    if (op.kind == OpKind::kSync) {
      ++queued;
      continue;
    }
    if (op.kind == OpKind::kWrite && file.readOnly) {
      Throw(env, kBadArgument, Where(i) + "cannot write to " + file.path + ": opened read-only");
    }
    op.offset = Field64(env, d, i, kFileOffset, "file offset");
    op.mem = TargetRange(env, targets, d, i, kTarget, kTargetOffset, "target", &op.len);
    if (file.direct) {
      if (op.offset % file.offsetAlign != 0 || op.len % file.offsetAlign != 0) {
        if (file.bufferedFd < 0) {
          Throw(env, kBadArgument,
                Where(i) + "O_DIRECT on " + file.path + " needs file offsets and lengths in " +
                    "multiples of " + std::to_string(file.offsetAlign) + ", got offset " +
                    std::to_string(op.offset) + " and length " + std::to_string(op.len) +
                    " (open the file with direct: 'auto' to allow buffered I/O for such requests)");
        }
        op.fd = file.bufferedFd;  // direct: 'auto' — reported per file, chosen per request
      } else {
        op.align = file.offsetAlign;
        if (reinterpret_cast<uintptr_t>(op.mem) % file.memAlign != 0) {
          op.bounceAlign = file.memAlign > kBounceAlign ? file.memAlign : kBounceAlign;
        }
      }
    }
    if (op.len > 0) ++queued;
  }

  HoldTargets(env, targets, &batch->borrowed, &batch->keepAlive);
  for (const auto& f : files) batch->keepAlive.push_back(f);

  Napi::Promise promise = batch->deferred.Promise();
  if (queued == 0) {
    // Nothing to do in the kernel (empty batch or only zero-length transfers).
    Napi::Float64Array results = Napi::Float64Array::New(env, anyCrc ? 2 * count : count);
    for (size_t i = 0; i < results.ElementLength(); ++i) results[i] = 0;  // CRC of nothing is 0
    ReleaseTargets(env, &batch->borrowed);
    batch->deferred.Resolve(results);
    return promise;
  }

  batch->withCrc = anyCrc;
  std::vector<Op*> work;
  work.reserve(queued);
  for (Op& op : batch->ops) {
    if (op.kind == OpKind::kSync || op.len > 0) work.push_back(&op);
  }
  batch->remaining.store(queued, std::memory_order_relaxed);
  batch->sink = this;
  life_.Busy(env);
  Ref();  // the JS engine object stays alive while its batches are out
  batch.release();
  io_->Submit(work);
  return promise;
}

Napi::Value Engine::Close(const Napi::CallbackInfo& info) {
  life_.Shutdown();
  return info.Env().Undefined();
}

Napi::Value Engine::Kind(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), kind_);
}

Napi::Value Engine::QueueDepth(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), queueDepth_);
}

Napi::Value Engine::InFlight(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(life_.busy()));
}

}  // namespace kvtier
