// RDMA verbs endpoint (libibverbs through the shim): one device port with its protection domain
// and completion queue, memory registrations, and RC queue pairs brought up from the peer's
// address exchanged over the TCP control channel. get is a one-sided RDMA READ from the peer's
// registered region, put an RDMA WRITE into it; completions are polled. Every verbs object is
// owned by an RAII handle and every return code is checked.
//
// This path compiles everywhere and has not yet run on RDMA hardware (README, "Peers").
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "../shim/ibverbs.h"

namespace kvtier {

// What one side tells the other to connect an RC queue pair (docs/protocol.md, verbs).
struct VerbsAddress {
  uint16_t lid = 0;
  uint32_t qpn = 0;
  uint32_t psn = 0;
  uint8_t gid[16] = {0};
  bool global = false;  // RoCE (Ethernet link layer) routes by GID, InfiniBand by LID
};

class VerbsEndpoint {
 public:
  struct Options {
    std::string device;  // empty: the first device with an active port
    uint8_t port = 1;
    int gidIndex = 0;
    int cqDepth = 1024;
  };

  class Registration {
   public:
    ~Registration();
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;
    uint32_t lkey() const { return mr_->lkey; }
    uint32_t rkey() const { return mr_->rkey; }
    uint64_t addr() const { return reinterpret_cast<uint64_t>(mr_->addr); }

   private:
    friend class VerbsEndpoint;
    Registration(const shim::ibv::Api* api, shim::ibv::Mr* mr) : api_(api), mr_(mr) {}
    const shim::ibv::Api* api_;
    shim::ibv::Mr* mr_;
  };

  class QueuePair {
   public:
    ~QueuePair();
    QueuePair(const QueuePair&) = delete;
    QueuePair& operator=(const QueuePair&) = delete;
    VerbsAddress local() const { return local_; }
    // INIT -> RTR -> RTS against the peer's address.
    bool Connect(const VerbsAddress& remote, std::string* error);
    // One-sided transfers; wrId comes back in the completion.
    bool PostRead(uint64_t wrId, void* local, uint32_t lkey, uint64_t remote, uint32_t rkey,
                  uint32_t len, std::string* error);
    bool PostWrite(uint64_t wrId, void* local, uint32_t lkey, uint64_t remote, uint32_t rkey,
                   uint32_t len, std::string* error);
    // Moves the queue pair to the error state: work requests still queued complete with a flush
    // error instead of moving bytes, so their memory can be let go once they have.
    bool Fail(std::string* error);

   private:
    friend class VerbsEndpoint;
    QueuePair(VerbsEndpoint* ep, shim::ibv::Qp* qp, VerbsAddress local)
        : ep_(ep), qp_(qp), local_(local) {}
    bool Post(int opcode, uint64_t wrId, void* local, uint32_t lkey, uint64_t remote, uint32_t rkey,
              uint32_t len, std::string* error);
    VerbsEndpoint* ep_;
    shim::ibv::Qp* qp_;
    VerbsAddress local_;
  };

  // Opens the device and port; nullptr and *error when anything is missing.
  static std::unique_ptr<VerbsEndpoint> Open(const Options& options, std::string* error);
  ~VerbsEndpoint();
  VerbsEndpoint(const VerbsEndpoint&) = delete;
  VerbsEndpoint& operator=(const VerbsEndpoint&) = delete;

  // Host memory; device memory too where the NIC and its driver support it (GPUDirect RDMA).
  // `access` is the ibv access flags the NIC enforces on this registration: callers grant only
  // what the role needs (kAccessLocalWrite for memory RDMA READs land in; kAccessRemoteRead for
  // memory lent to a peer's READ; kAccessRemoteWrite, which verbs requires to come with
  // kAccessLocalWrite, for memory a peer WRITEs into).
  std::unique_ptr<Registration> Register(void* addr, size_t len, int access, std::string* error);
  // `remoteAccess` becomes the queue pair's access flags: what the peer's one-sided operations
  // may do through it (0 for an initiator that lends nothing).
  std::unique_ptr<QueuePair> CreateQueuePair(int remoteAccess, std::string* error);
  // Up to n completions; -1 with *error on a polling failure.
  int Poll(shim::ibv::Wc* wcs, int n, std::string* error);

  const std::string& device() const { return device_; }
  uint8_t port() const { return port_; }
  bool ethernet() const { return ethernet_; }

 private:
  VerbsEndpoint() = default;
  const shim::ibv::Api* api_ = nullptr;
  shim::ibv::Context* context_ = nullptr;
  shim::ibv::Pd* pd_ = nullptr;
  shim::ibv::Cq* cq_ = nullptr;
  std::string device_;
  uint8_t port_ = 1;
  int gidIndex_ = 0;
  int cqDepth_ = 0;
  uint16_t lid_ = 0;
  int mtu_ = shim::ibv::kMtu1024;
  bool ethernet_ = false;
  shim::ibv::Gid gid_{};
};

}  // namespace kvtier
