#include "verbs_link.h"

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <mutex>
#include <unordered_set>
#include <utility>

#include "../common/args.h"
#include "../common/descriptors.h"
#include "../common/errors.h"
#include "../common/targets.h"
#include "verbs_probe.h"

namespace kvtier {

namespace ibv = shim::ibv;

namespace {

// post(): six numbers per work request.
constexpr size_t kOpStride = 6;
constexpr int kOpRead = 0;
constexpr int kOpWrite = 1;
// The queue pair takes this many work requests at once (verbs_endpoint.cc, kMaxSendWr), and
// the completion queue, shared by every queue pair of the endpoint, this many completions.
constexpr uint32_t kMaxSendWr = 512;
constexpr size_t kMaxOutstanding = 1024;
constexpr int kPollBatch = 32;
// Idle polling: spin this many empty polls (completions of small transfers come within
// microseconds), then sleep, doubling from kNapMinNs up to kNapMaxNs, so a link waiting on a slow
// peer does not burn a core.
constexpr int kSpinPolls = 64;
constexpr long kNapMinNs = 20'000;
constexpr long kNapMaxNs = 1'000'000;
// close(): how long work requests already posted get to complete (or flush) before the thread
// stops waiting for them.
constexpr auto kDrainLimit = std::chrono::seconds(2);

std::string StatusText(int status) {
  switch (status) {
    case ibv::kWcLocProtErr:
      return "local protection error";
    case ibv::kWcWrFlushErr:
      return "flushed (the queue pair is in the error state)";
    case ibv::kWcRemAccessErr:
      return "remote access error (bad remote key or address)";
    case ibv::kWcRetryExcErr:
      return "retries exceeded (the peer does not answer)";
    default:
      return "completion status " + std::to_string(status);
  }
}

void PutLe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}

void PutLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint32_t GetLe32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

uint32_t U32Field(Napi::Env env, double v, size_t i, const char* what) {
  if (!IsByteCount(v) || v > 4294967295.0) {
    Throw(env, kBadArgument, "work request " + std::to_string(i) + ": " + what + " out of range");
  }
  return static_cast<uint32_t>(v);
}

}  // namespace

struct VerbsLink::Job {
  explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise::Deferred deferred;
  std::vector<napi_ref> borrowed;                // JavaScript buffers, released on the main thread
  std::vector<std::shared_ptr<void>> keepAlive;  // region memory written or read
  std::vector<std::shared_ptr<Reg>> regs;        // registrations the work requests name
  std::shared_ptr<Qp> qp;
  std::vector<Work> work;
  // Completion thread only, until delivered.
  // Work requests of this job were outstanding when the link gave up on them (KeepForever).
  bool stranded = false;
  size_t posted = 0;
  size_t completed = 0;
  int status = 0;  // the first failure: a completion status, or -1 when posting failed
  std::string error;
};

namespace {

// A job given up on while some of its work requests were outstanding (the completion queue
// failed, or close() stopped waiting for a device that neither completed nor flushed them): the
// queue pair was moved to the error state, but nothing says the device is done with those work
// requests, and a READ still under way would write into the job's memory. So that memory is not
// handed back as free: the job's region memory, its registrations (which keep the endpoint and
// so the device context open) and its queue pair are kept here for the life of the process, and
// Deliver keeps its JavaScript buffers referenced for good. A leak, on purpose: bounded by the
// transfers of a failed device, and safe, where freeing could let the NIC write into memory
// JavaScript reuses. Completion thread; allocation failure throws to Run's catch, which keeps
// the job undelivered (and so its memory held) as well.
void KeepForever(VerbsLink::Job* j);

}  // namespace

Napi::Function VerbsLink::Define(Napi::Env env) {
  return DefineClass(
      env, "NativeVerbs",
      {InstanceMethod<&VerbsLink::CreateQueuePair>("createQueuePair"),
       InstanceMethod<&VerbsLink::ConnectQueuePair>("connectQueuePair"),
       InstanceMethod<&VerbsLink::DestroyQueuePair>("destroyQueuePair"),
       InstanceMethod<&VerbsLink::Register>("register"), InstanceMethod<&VerbsLink::Post>("post"),
       InstanceMethod<&VerbsLink::Close>("close"), InstanceAccessor<&VerbsLink::Device>("device")});
}

// new NativeVerbs({ device?, port?, role? }): KVTIER_NOT_AVAILABLE naming the step that failed.
// role 'client' (the default: least access) or 'server' (verbs_link.h).
VerbsLink::VerbsLink(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VerbsLink>(info) {
  Napi::Env env = info.Env();
  Napi::Object opts = info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(env);
  std::string role = StringOption(opts, "role", "client");
  if (role != "client" && role != "server") {
    Throw(env, kBadArgument, "role must be 'client' or 'server'");
  }
  responder_ = role == "server";
  VerbsEndpoint::Options o = VerbsOptionsArg(env, opts);
  o.cqDepth = static_cast<int>(kMaxOutstanding);
  std::string error;
  std::unique_ptr<VerbsEndpoint> ep = VerbsEndpoint::Open(o, &error);
  if (!ep) Throw(env, kNotAvailable, "the verbs transport is not available: " + error);
  ep_ = std::shared_ptr<VerbsEndpoint>(std::move(ep));
  // An idle link must not keep the process alive; post() holds it while jobs are out.
  life_.Begin(env, Tsfn::New(env, "kvtier-verbs", 0, 1, this), [this] { StopWork(); });
}

VerbsLink::~VerbsLink() { life_.Shutdown(); }

void VerbsLink::StopWork() {
  // Queue pairs in the error state flush whatever is still queued, so the thread's drain is short.
  for (auto& [id, qp] : qps_) {
    qp->dead.store(true);
    std::string ignored;
    if (qp->connected) (void)qp->qp->Fail(&ignored);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  qps_.clear();
  cache_.clear();
  ep_.reset();  // closed once the last queue pair and registration held by a job is gone
}

Napi::Value VerbsLink::Device(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), ep_ ? ep_->device() : "");
}

// createQueuePair() -> { id, address: Buffer(28) }
Napi::Value VerbsLink::CreateQueuePair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (life_.closed()) Throw(env, kClosed, "the verbs link is closed");
  std::string error;
  // A client's queue pair is only ever the initiator: its peer may neither read nor write through
  // it. A server's answers the client's READs and WRITEs.
  int remoteAccess = responder_ ? ibv::kAccessRemoteRead | ibv::kAccessRemoteWrite : 0;
  std::unique_ptr<VerbsEndpoint::QueuePair> pair = ep_->CreateQueuePair(remoteAccess, &error);
  if (!pair) Throw(env, kNotAvailable, "cannot create a queue pair: " + error);
  auto qp = std::make_shared<Qp>();
  qp->ep = ep_;
  qp->qp = std::move(pair);
  VerbsAddress a = qp->qp->local();
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, kVerbsAddressBytes);
  uint8_t* p = out.Data();
  std::memset(p, 0, kVerbsAddressBytes);
  PutLe16(p, a.lid);
  PutLe16(p + 2, a.global ? 1 : 0);
  PutLe32(p + 4, a.qpn);
  PutLe32(p + 8, a.psn);
  std::memcpy(p + 12, a.gid, sizeof(a.gid));
  uint32_t id = nextQp_++;
  qps_[id] = std::move(qp);
  Napi::Object r = Napi::Object::New(env);
  r.Set("id", Napi::Number::New(env, id));
  r.Set("address", out);
  return r;
}

std::shared_ptr<VerbsLink::Qp> VerbsLink::QpArg(Napi::Env env, Napi::Value v) {
  if (life_.closed()) Throw(env, kClosed, "the verbs link is closed");
  uint64_t id = ByteCountArg(env, v, "queue pair id");
  auto it = qps_.find(static_cast<uint32_t>(id));
  if (id > UINT32_MAX || it == qps_.end()) {
    Throw(env, kClosed, "queue pair " + std::to_string(id) + " is closed");
  }
  return it->second;
}

// connectQueuePair(id, remote: Uint8Array(28)): INIT -> RTR -> RTS against the peer's address.
Napi::Value VerbsLink::ConnectQueuePair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Qp> qp = QpArg(env, info[0]);
  if (!info[1].IsTypedArray() ||
      info[1].As<Napi::TypedArray>().ByteLength() != kVerbsAddressBytes) {
    Throw(env, kBadArgument,
          "a queue pair address is " + std::to_string(kVerbsAddressBytes) + " bytes");
  }
  if (qp->connected) Throw(env, kBadArgument, "the queue pair is connected already");
  Napi::TypedArray ta = info[1].As<Napi::TypedArray>();
  const uint8_t* p = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  VerbsAddress remote;
  remote.lid = static_cast<uint16_t>(p[0] | p[1] << 8);
  remote.global = (p[2] & 1) != 0;
  remote.qpn = GetLe32(p + 4);
  remote.psn = GetLe32(p + 8) & 0xffffff;
  std::memcpy(remote.gid, p + 12, sizeof(remote.gid));
  std::string error;
  if (!qp->qp->Connect(remote, &error))
    Throw(env, kPeer, "cannot connect the queue pair: " + error);
  qp->connected = true;
  return env.Undefined();
}

// destroyQueuePair(id): work requests still queued on it flush; it is destroyed once no job uses
// it any more.
Napi::Value VerbsLink::DestroyQueuePair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (life_.closed()) return env.Undefined();
  uint64_t id = ByteCountArg(env, info[0], "queue pair id");
  auto it = qps_.find(static_cast<uint32_t>(id));
  if (id > UINT32_MAX || it == qps_.end()) return env.Undefined();
  std::shared_ptr<Qp> qp = std::move(it->second);
  qps_.erase(it);
  qp->dead.store(true);
  std::string ignored;
  // Unconnected queue pairs have nothing in flight; a failed transition changes nothing either
  // way: the jobs on it end when their completions (or the link's close) come.
  if (qp->connected && qp.use_count() > 1) (void)qp->qp->Fail(&ignored);
  return env.Undefined();
}

void VerbsLink::Sweep() {
  for (auto it = cache_.begin(); it != cache_.end();) {
    // Only the cache holds the memory: its Region was closed and no transfer uses it.
    if (it->second.memory.use_count() == 1) {
      it = cache_.erase(it);
    } else {
      ++it;
    }
  }
}

std::shared_ptr<VerbsLink::Reg> VerbsLink::RegistrationFor(
    Napi::Env env, uint8_t* data, uint64_t len, const std::shared_ptr<RegionMemory>& memory,
    int access) {
  if (memory) {
    auto it = cache_.find({memory.get(), access});
    if (it != cache_.end()) return it->second.reg;
    Sweep();
    data = memory->data();
    len = memory->size();
  }
  std::string error;
  auto reg = std::make_shared<Reg>();
  reg->ep = ep_;
  reg->mr = ep_->Register(data, len, access, &error);
  if (!reg->mr) Throw(env, kIo, "cannot register memory for RDMA: " + error);
  if (memory) cache_[{memory.get(), access}] = Cached{memory, reg};
  return reg;
}

// register(target: Region or a view of one, access: 'read' | 'write') -> { address, rkey }: the
// region stays registered (and its memory mapped) until it is closed and the next registration
// sweeps it. 'read': the peer may only RDMA READ it; 'write': the peer may RDMA WRITE (and READ)
// it. Servers only: a client lends nothing.
Napi::Value VerbsLink::Register(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (life_.closed()) Throw(env, kClosed, "the verbs link is closed");
  if (!responder_) {
    Throw(env, kBadArgument, "a client verbs link lends no memory (register needs role 'server')");
  }
  std::string mode = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  int access = 0;
  if (mode == "read") {
    access = ibv::kAccessRemoteRead;
  } else if (mode == "write") {
    // Verbs requires local write with remote write; remote read lets the client check its writes.
    access = ibv::kAccessLocalWrite | ibv::kAccessRemoteWrite | ibv::kAccessRemoteRead;
  } else {
    Throw(env, kBadArgument, "access must be 'read' or 'write'");
  }
  TargetRef ref = ClassifyTarget(env, info[0], 0);
  Target t = TargetMemory(env, ref, 0);
  if (t.device) Throw(env, kBadArgument, "GPU memory is not registered for RDMA by this build");
  if (!t.memory) {
    // A plain buffer may be collected and its address reused while the peer still holds the key.
    Throw(env, kBadArgument, "only Region memory can stay registered for RDMA");
  }
  std::shared_ptr<Reg> reg = RegistrationFor(env, t.data, t.size, t.memory, access);
  Napi::Object r = Napi::Object::New(env);
  // User-space addresses are below 2^47, exact in a double.
  r.Set("address",
        Napi::Number::New(env, static_cast<double>(reinterpret_cast<uintptr_t>(t.data))));
  r.Set("rkey", Napi::Number::New(env, reg->mr->rkey()));
  return r;
}

// post(id, ops: Float64Array, targets) -> Promise<void>. Six numbers per work request: opcode
// (0 READ, 1 WRITE), target index, target offset, length, remote address, remote key. Rejects
// with KVTIER_PEER when any fails; it settles only once none of them can still move a byte.
Napi::Value VerbsLink::Post(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Qp> qp = QpArg(env, info[0]);
  if (!qp->connected) Throw(env, kBadArgument, "the queue pair is not connected");
  if (!info[1].IsTypedArray() ||
      info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    Throw(env, kBadArgument, "ops must be a Float64Array");
  }
  Napi::Float64Array ops = info[1].As<Napi::Float64Array>();
  if (ops.ElementLength() % kOpStride != 0) {
    Throw(env, kBadArgument, "ops must hold six numbers per work request");
  }
  if (!info[2].IsArray()) Throw(env, kBadArgument, "targets must be an array");
  Napi::Array list = info[2].As<Napi::Array>();
  // Everything that can run user JavaScript first, then the pointers (targets.h).
  std::vector<TargetRef> refs;
  for (uint32_t i = 0; i < list.Length(); ++i) refs.push_back(ClassifyTarget(env, list.Get(i), i));
  std::vector<Target> targets;
  for (size_t i = 0; i < refs.size(); ++i) {
    targets.push_back(TargetMemory(env, refs[i], i));
    if (targets.back().device) {
      Throw(env, kBadArgument, "target " + std::to_string(i) + " is GPU memory");
    }
  }
  auto job = std::make_unique<Job>(env);
  job->qp = qp;
  std::vector<std::shared_ptr<Reg>> regOf(targets.size());
  size_t n = ops.ElementLength() / kOpStride;
  const double* d = ops.Data();
  for (size_t i = 0; i < n; ++i, d += kOpStride) {
    uint32_t opcode = U32Field(env, d[0], i, "opcode");
    if (opcode != kOpRead && opcode != kOpWrite) {
      Throw(env, kBadArgument, "work request " + std::to_string(i) + ": opcode must be 0 or 1");
    }
    uint32_t at = U32Field(env, d[1], i, "target index");
    if (at >= targets.size()) {
      Throw(env, kBadArgument,
            "work request " + std::to_string(i) + ": no target " + std::to_string(at));
    }
    if (!IsByteCount(d[2]) || !IsByteCount(d[4])) {
      Throw(env, kBadArgument, "work request " + std::to_string(i) + ": bad offset or address");
    }
    uint64_t off = static_cast<uint64_t>(d[2]);
    uint32_t len = U32Field(env, d[3], i, "length");
    const Target& t = targets[at];
    if (len == 0 || off > t.size || len > t.size - off) {
      Throw(env, kBadArgument,
            "work request " + std::to_string(i) + ": " + std::to_string(len) + " bytes at " +
                std::to_string(off) + " do not fit a target of " + std::to_string(t.size));
    }
    // The caller's memory: an RDMA READ writes into it (local write); the source of a WRITE needs
    // no access at all. Never remote access: the peer gets no key to it.
    if (!regOf[at]) {
      regOf[at] = RegistrationFor(env, t.data, t.size, t.memory, ibv::kAccessLocalWrite);
    }
    job->work.push_back(Work{opcode == kOpRead ? ibv::kWrRdmaRead : ibv::kWrRdmaWrite, t.data + off,
                             regOf[at]->mr->lkey(), static_cast<uint64_t>(d[4]),
                             U32Field(env, d[5], i, "remote key"), len});
  }
  for (auto& r : regOf) {
    if (r) job->regs.push_back(std::move(r));
  }
  Napi::Promise promise = job->deferred.Promise();
  if (job->work.empty()) {
    job->deferred.Resolve(env.Undefined());
    return promise;
  }
  HoldTargets(env, targets, &job->borrowed, &job->keepAlive);
  if (!thread_.joinable()) {
    try {
      thread_ = std::thread([this] { Run(); });
    } catch (const std::exception& e) {
      ReleaseTargets(env, &job->borrowed);
      Throw(env, kIo, std::string("cannot start the verbs completion thread: ") + e.what());
    }
  }
  life_.Busy(env);
  Ref();  // the JavaScript object stays alive while its jobs are out
  {
    std::lock_guard<std::mutex> lock(mu_);
    incoming_.push_back(job.release());
  }
  wake_.notify_one();
  return promise;
}

void VerbsLink::Deliver(Napi::Env env, Napi::Function, VerbsLink* self, Job* raw) {
  std::unique_ptr<Job> job(raw);
  if (env == nullptr) {
    // The environment is gone: nobody to settle; the references die with it.
    job->borrowed.clear();
    return;
  }
  // A stranded job's buffers stay referenced for good (KeepForever): the device may still write
  // into them, so they must never be collected and their memory reused.
  if (!job->stranded) {
    ReleaseTargets(env, &job->borrowed);
  }
  job->borrowed.clear();
  // No exception may leave a thread-safe function's callback: it would end the process.
  try {
    if (job->status == 0) {
      job->deferred.Resolve(env.Undefined());
    } else {
      job->deferred.Reject(MakeError(env, kPeer, job->error).Value());
    }
    self->life_.Idle(env);
    self->Unref();
  } catch (const Napi::Error&) {
    // JavaScript cannot run (the environment is stopping): nobody is left to settle.
  }
}

// The completion thread: posts the jobs' work requests (never more than a queue pair or the
// completion queue takes), polls, and hands each finished job to the main thread. Touches no
// JavaScript and lets no exception out.
void VerbsLink::Run() {
  std::vector<Job*> active;
  struct Out {
    Job* job;
    size_t index;
  };
  std::unordered_map<uint64_t, Out> outstanding;
  // Work requests outstanding per queue pair; an entry goes when its count drops to zero, so a
  // destroyed queue pair leaves nothing behind (and a new one at its address starts at zero).
  std::unordered_map<const Qp*, uint32_t> perQp;
  uint64_t nextWr = 1;
  int idle = 0;
  bool stopping = false;
  // Set once polling failed: the completion queue is shared by every queue pair of the endpoint,
  // so nothing posted from then on could be seen to complete. No more work is posted.
  std::string deviceError;
  auto stopAt = std::chrono::steady_clock::time_point::max();
  auto finish = [&](Job* j) {
    if (life_.tsfn().NonBlockingCall(j) != napi_ok) {
      // Only during environment teardown: nobody is left to settle it.
      j->borrowed.clear();
      delete j;
    }
  };
  // Gives up on every outstanding work request: first their queue pairs go to the error state
  // (so a device that still works flushes them instead of moving bytes), then their jobs fail,
  // and since nothing confirms the device is done with them, their memory is kept for good.
  auto abandon = [&](const std::string& why) {
    std::unordered_set<Qp*> failed;
    for (auto& [id, o] : outstanding) {
      Qp* qp = o.job->qp.get();
      if (!failed.insert(qp).second) continue;
      qp->dead.store(true);
      std::string ignored;
      // A failed transition leaves nothing better to do: the memory is kept either way.
      (void)qp->qp->Fail(&ignored);
    }
    for (auto& [id, o] : outstanding) {
      Job* j = o.job;
      j->completed++;
      if (j->status == 0) {
        j->status = -1;
        j->error = why;
      }
      if (!j->stranded) {
        j->stranded = true;
        KeepForever(j);
      }
    }
    outstanding.clear();
    perQp.clear();
  };
  try {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (active.empty() && incoming_.empty() && !stop_) {
          wake_.wait(lock, [&] { return stop_ || !incoming_.empty(); });
          idle = 0;
        }
        while (!incoming_.empty()) {
          active.push_back(incoming_.front());
          incoming_.pop_front();
        }
        if (stop_ && !stopping) {
          stopping = true;
          stopAt = std::chrono::steady_clock::now() + kDrainLimit;
        }
      }
      bool progress = false;
      for (Job* j : active) {
        while (j->posted < j->work.size()) {
          if (j->status != 0 || stopping || j->qp->dead.load() || !deviceError.empty()) {
            // The rest is not posted: a failed job is reported failed as a whole anyway.
            if (j->status == 0) {
              j->status = ibv::kWcWrFlushErr;
              j->error = !deviceError.empty() ? "the verbs device failed earlier: " + deviceError
                         : stopping           ? "the verbs link was closed"
                                              : "the queue pair was closed";
            }
            j->completed += j->work.size() - j->posted;
            j->posted = j->work.size();
            progress = true;
            break;
          }
          if (outstanding.size() >= kMaxOutstanding) break;
          auto onQp = perQp.find(j->qp.get());
          if (onQp != perQp.end() && onQp->second >= kMaxSendWr) break;
          const Work& w = j->work[j->posted];
          uint64_t id = nextWr++;
          std::string error;
          bool ok =
              w.opcode == ibv::kWrRdmaRead
                  ? j->qp->qp->PostRead(id, w.local, w.lkey, w.remote, w.rkey, w.len, &error)
                  : j->qp->qp->PostWrite(id, w.local, w.lkey, w.remote, w.rkey, w.len, &error);
          j->posted++;
          progress = true;
          if (!ok) {
            j->status = -1;
            j->error = error;
            j->completed++;
            continue;
          }
          outstanding.emplace(id, Out{j, j->posted - 1});
          perQp[j->qp.get()]++;
        }
      }
      int got = 0;
      if (!outstanding.empty()) {
        ibv::Wc wcs[kPollBatch];
        std::string error;
        got = ep_->Poll(wcs, kPollBatch, &error);
        if (got < 0) {
          // The completion queue failed: nothing outstanding will ever be reported complete.
          deviceError = error;
          abandon(error + " (transfers in flight were given up; their memory stays held)");
          got = 0;
          progress = true;
        }
        for (int k = 0; k < got; ++k) {
          auto it = outstanding.find(wcs[k].wrId);
          if (it == outstanding.end()) continue;  // not ours: cannot happen with one owner
          Out o = it->second;
          outstanding.erase(it);
          auto onQp = perQp.find(o.job->qp.get());
          if (onQp != perQp.end() && --onQp->second == 0) perQp.erase(onQp);
          o.job->completed++;
          if (wcs[k].status != ibv::kWcSuccess && o.job->status == 0) {
            o.job->status = wcs[k].status;
            o.job->error = std::string("RDMA ") +
                           (o.job->work[o.index].opcode == ibv::kWrRdmaRead ? "READ" : "WRITE") +
                           " failed: " + StatusText(wcs[k].status);
          }
        }
      }
      if (stopping && !outstanding.empty() && std::chrono::steady_clock::now() >= stopAt) {
        // A device that neither completes nor flushes: give up on it, keeping the memory.
        abandon("the verbs link was closed with transfers in flight (their memory stays held)");
      }
      auto done = std::partition(active.begin(), active.end(),
                                 [](Job* j) { return j->completed < j->work.size(); });
      for (auto it = done; it != active.end(); ++it) finish(*it);
      active.erase(done, active.end());
      if (stopping && active.empty()) break;
      if (progress || got > 0) {
        idle = 0;
      } else if (!outstanding.empty() || !active.empty()) {
        if (++idle < kSpinPolls) {
          std::this_thread::yield();
        } else {
          int shift = std::min(idle - kSpinPolls, 6);
          timespec nap{0, std::min(kNapMaxNs, kNapMinNs << shift)};
          nanosleep(&nap, nullptr);
        }
      }
    }
  } catch (const std::exception&) {
    // Allocation failure on this thread: the jobs cannot be tracked any further. They are not
    // delivered (their memory stays held), which is the safe side of a broken invariant.
  }
}

namespace {

void KeepForever(VerbsLink::Job* j) {
  static std::mutex mu;
  // Never freed, on purpose (see the declaration above).
  static auto* kept = new std::vector<std::shared_ptr<void>>();
  std::lock_guard<std::mutex> lock(mu);
  kept->reserve(kept->size() + j->keepAlive.size() + j->regs.size() + 1);
  for (auto& k : j->keepAlive) kept->push_back(std::move(k));
  for (auto& r : j->regs) kept->push_back(std::move(r));
  kept->push_back(j->qp);
  j->keepAlive.clear();
  j->regs.clear();
}

}  // namespace

Napi::Value VerbsLink::Close(const Napi::CallbackInfo& info) {
  life_.Shutdown();
  return info.Env().Undefined();
}

}  // namespace kvtier
