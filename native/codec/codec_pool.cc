#include "codec_pool.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../common/args.h"
#include "../common/descriptors.h"
#include "../common/errors.h"
#include "../common/targets.h"
#include "codec.h"
#include "codec_js.h"

namespace kvtier {

struct CodecPool::Call {
  explicit Call(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise::Deferred deferred;
  std::vector<napi_ref> borrowed;                // JavaScript buffers, released on the main thread
  std::vector<std::shared_ptr<void>> keepAlive;  // region memory the buffers are views of
  codec::Params params;
  codec::Isa isa = codec::Isa::kScalar;
  bool encode = true;
  const uint8_t* src = nullptr;
  uint8_t* dst = nullptr;
  uint64_t srcBlock = 0;
  uint64_t dstBlock = 0;
  std::atomic<size_t> remaining{0};  // tasks not yet done
  // The first block refused, by index, so the message is the one the synchronous call gives
  // whichever thread met it first.
  std::mutex mu;
  uint64_t failedBlock = UINT64_MAX;
  std::string why;
};

Napi::Function CodecPool::Define(Napi::Env env) {
  return DefineClass(
      env, "NativeCodecPool",
      {InstanceMethod<&CodecPool::Run>("run"), InstanceMethod<&CodecPool::Close>("close"),
       InstanceAccessor<&CodecPool::Threads>("threads"),
       InstanceAccessor<&CodecPool::InFlight>("inFlight")});
}

CodecPool::CodecPool(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CodecPool>(info) {
  Napi::Env env = info.Env();
  Napi::Object opts = info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(env);
  Napi::Value t = opts.Get("threads");
  uint64_t threads = t.IsUndefined() ? 1 : ByteCountArg(env, t, "threads");
  if (threads < 1 || threads > 256) Throw(env, kBadArgument, "threads must be between 1 and 256");
  threads_ = static_cast<unsigned>(threads);
  std::string error;
  if (!pool_.Start(
          threads_, [this](Task& task) { Execute(task); }, &error)) {
    Throw(env, kNotAvailable, "cannot start codec threads: " + error);
  }
  // An idle pool must not keep the process alive; run() holds it while calls are out. Stopping
  // lets the threads finish every part queued, so each call is delivered (or freed at teardown).
  life_.Begin(env, Tsfn::New(env, "kvtier-codec", 0, 1, this), [this] { pool_.Stop(); });
}

CodecPool::~CodecPool() { life_.Shutdown(); }

void CodecPool::Execute(Task& task) {
  Call& c = *task.call;
  for (uint64_t b = task.first; b < task.last; b++) {
    const uint8_t* in = c.src + b * c.srcBlock;
    uint8_t* out = c.dst + b * c.dstBlock;
    const char* why = c.encode ? codec::Encode(c.params, in, out, c.isa)
                               : codec::Decode(c.params, in, out, c.isa);
    if (why != nullptr) {
      std::lock_guard<std::mutex> lock(c.mu);
      if (b < c.failedBlock) {
        c.failedBlock = b;
        c.why = why;
      }
      break;
    }
  }
  if (c.remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  if (life_.tsfn().NonBlockingCall(&c) != napi_ok) {
    // Only during environment teardown: nobody is left to settle. The references die with the
    // environment; the region memory is let go here.
    c.borrowed.clear();
    delete &c;
  }
}

void CodecPool::Deliver(Napi::Env env, Napi::Function, CodecPool* pool, Call* raw) {
  std::unique_ptr<Call> call(raw);
  if (env == nullptr) {
    call->borrowed.clear();  // the environment is gone and its references with it
    return;
  }
  ReleaseTargets(env, &call->borrowed);
  call->keepAlive.clear();
  if (call->failedBlock != UINT64_MAX) {
    Napi::Error e = MakeError(env, kBadArgument,
                              "block " + std::to_string(call->failedBlock) + ": " + call->why);
    call->deferred.Reject(e.Value());
  } else {
    call->deferred.Resolve(env.Undefined());
  }
  pool->life_.Idle(env);
  pool->Unref();
}

Napi::Value CodecPool::Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (life_.closed()) Throw(env, kClosed, "the codec pool is closed");
  std::string op = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  if (op != "encode" && op != "decode") Throw(env, kBadArgument, "op must be encode or decode");
  const bool encode = op == "encode";
  codec::Params p = CodecParamsArg(env, info[1]);
  // Everything that can run user JavaScript (getters, Proxy traps) first, the pointers after.
  TargetRef srcRef = ClassifyTarget(env, info[2], 0);
  TargetRef dstRef = ClassifyTarget(env, info[3], 1);
  const uint64_t blocks = ByteCountArg(env, info[4], "blocks");
  const codec::Isa isa = CodecIsaArg(env, info[5]);
  std::vector<Target> targets;
  targets.push_back(TargetMemory(env, srcRef, 0));
  targets.push_back(TargetMemory(env, dstRef, 1));
  for (const Target& t : targets) {
    // The codec threads dereference host pointers; a device address would be a wild read.
    if (t.device) Throw(env, kBadArgument, "the codecs run on host memory, not GPU memory");
  }
  const uint64_t decoded = codec::DecodedBytes(p), encoded = codec::EncodedBytes(p);
  const uint64_t srcBlock = encode ? decoded : encoded;
  const uint64_t dstBlock = encode ? encoded : decoded;
  const Target& src = targets[0];
  const Target& dst = targets[1];
  CheckCodecSpans(env, src.data, src.size, srcBlock, dst.data, dst.size, dstBlock, blocks);
  if (!encode) {
    // Every header before any block is written, so a refused batch leaves dst as it was.
    for (uint64_t b = 0; b < blocks; b++) {
      if (const char* why = codec::CheckHeader(p, src.data + b * srcBlock)) {
        Throw(env, kBadArgument, "block " + std::to_string(b) + ": " + why);
      }
    }
  }

  auto call = std::make_unique<Call>(env);
  Napi::Promise promise = call->deferred.Promise();
  if (blocks == 0) {
    call->deferred.Resolve(env.Undefined());
    return promise;
  }
  call->params = p;
  call->isa = isa;
  call->encode = encode;
  call->src = src.data;
  call->dst = dst.data;
  call->srcBlock = srcBlock;
  call->dstBlock = dstBlock;
  HoldTargets(env, targets, &call->borrowed, &call->keepAlive);

  // Consecutive runs of blocks, one a thread at most: each thread streams through its own part.
  const uint64_t parts = std::min<uint64_t>(blocks, threads_);
  std::vector<Task> tasks;
  tasks.reserve(parts);
  for (uint64_t i = 0; i < parts; i++) {
    tasks.push_back({call.get(), blocks * i / parts, blocks * (i + 1) / parts});
  }
  call->remaining.store(tasks.size(), std::memory_order_relaxed);
  life_.Busy(env);
  Ref();  // the pool's JavaScript object stays alive while its calls are out
  call.release();
  pool_.PushAll(tasks.begin(), tasks.end());
  return promise;
}

Napi::Value CodecPool::Close(const Napi::CallbackInfo& info) {
  life_.Shutdown();
  return info.Env().Undefined();
}

Napi::Value CodecPool::Threads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), threads_);
}

Napi::Value CodecPool::InFlight(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(life_.busy()));
}

}  // namespace kvtier
