// JavaScript face of a VerbsEndpoint for the peer protocol (docs/protocol.md, "RDMA verbs").
// One object per client or server: it owns the endpoint (device, protection domain, completion
// queue), the RC queue pairs of its connections, and a cache of memory registrations.
//
// A link has a role, chosen when it is made, that decides what its peer may do to it (the NIC
// enforces it): a client's ('client', the default) queue pairs grant no remote access and it
// registers caller memory for local write only, so a peer cannot read or write the client's
// memory; a server's ('server') queue pairs grant remote read and write, and register() lends a
// region for remote read only ('read') or for remote write and read ('write'), each access its
// own registration.
//
// A server only registers memory and brings queue pairs up: the client drives every transfer
// (one-sided READ and WRITE), so the server's side never posts and never polls. A client posts
// through post(), whose work requests a completion thread posts (never more than the queue pair
// takes) and polls; the result reaches JavaScript through a thread-safe function, so no
// JavaScript runs off the main thread and no exception crosses a thread.
//
// This path has not yet run on RDMA hardware (README, "Peers").
#pragma once
#include <napi.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "../common/threaded_object.h"
#include "../memory/region_memory.h"
#include "verbs_endpoint.h"

namespace kvtier {

// The address a queue pair is connected with, as it crosses the wire in VERBS_CONNECT and
// VERBS_READY: lid u16, flags u16 (bit 0: route by GID), qpn u32, psn u32, gid 16 bytes.
inline constexpr size_t kVerbsAddressBytes = 28;

class VerbsLink : public Napi::ObjectWrap<VerbsLink> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit VerbsLink(const Napi::CallbackInfo& info);
  ~VerbsLink() override;

  // A registration that keeps its endpoint open for as long as it lives: deregistering after the
  // device is closed would be a use after free in the library.
  struct Reg {
    std::shared_ptr<VerbsEndpoint> ep;
    std::unique_ptr<VerbsEndpoint::Registration> mr;
  };
  // A queue pair and its endpoint, shared by the jobs posting on it: it is destroyed only once
  // no job can still have work requests outstanding on it.
  struct Qp {
    std::shared_ptr<VerbsEndpoint> ep;
    std::unique_ptr<VerbsEndpoint::QueuePair> qp;
    std::atomic<bool> dead{false};
    bool connected = false;
  };
  struct Work {
    int opcode;
    uint8_t* local;
    uint32_t lkey;
    uint64_t remote;
    uint32_t rkey;
    uint32_t len;
  };
  struct Job;

 private:
  static void Deliver(Napi::Env env, Napi::Function, VerbsLink* self, Job* job);
  using Tsfn = Napi::TypedThreadSafeFunction<VerbsLink, Job, &VerbsLink::Deliver>;

  Napi::Value CreateQueuePair(const Napi::CallbackInfo& info);
  Napi::Value ConnectQueuePair(const Napi::CallbackInfo& info);
  Napi::Value DestroyQueuePair(const Napi::CallbackInfo& info);
  Napi::Value Register(const Napi::CallbackInfo& info);
  Napi::Value Post(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Device(const Napi::CallbackInfo& info);

  // The registration covering [data, data + len): the cached one of a region's memory, or a new
  // one for a plain JavaScript buffer (held by the caller for as long as it is used).
  // `access`: the registration's ibv access flags; a region has one registration per access.
  std::shared_ptr<Reg> RegistrationFor(Napi::Env env, uint8_t* data, uint64_t len,
                                       const std::shared_ptr<RegionMemory>& memory, int access);
  void Sweep();
  std::shared_ptr<Qp> QpArg(Napi::Env env, Napi::Value v);
  void Run();
  // Fails the queue pairs (so the thread drains fast), joins the thread, lets go of the device.
  void StopWork();

  std::shared_ptr<VerbsEndpoint> ep_;
  // 'server': queue pairs accept the peer's READ and WRITE, and register() lends memory.
  bool responder_ = false;
  std::unordered_map<uint32_t, std::shared_ptr<Qp>> qps_;  // main thread only
  uint32_t nextQp_ = 1;
  // Registrations of regions' memory, by the memory and access (main thread only): memory lent
  // both for READ and for WRITE is registered twice, so that a key handed out for reading does
  // not allow writing. The cache holds the memory itself, so the bytes stay mapped while registered
  // even after the Region is closed; Sweep() lets go of memory nobody else holds any more.
  struct Cached {
    std::shared_ptr<RegionMemory> memory;
    std::shared_ptr<Reg> reg;
  };
  std::map<std::pair<const RegionMemory*, int>, Cached> cache_;

  std::thread thread_;
  std::mutex mu_;  // guards incoming_ and stop_
  std::condition_variable wake_;
  std::deque<Job*> incoming_;
  bool stop_ = false;
  ThreadedObject<Tsfn> life_;  // its busy count: jobs posted and not yet delivered
};

}  // namespace kvtier
