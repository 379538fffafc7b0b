#include "verbs_endpoint.h"

#include <cerrno>
#include <cstring>
#include <random>
#include <vector>

namespace kvtier {

namespace ibv = shim::ibv;

namespace {

std::string Errno(const char* what) {
  int err = errno;
  return std::string(what) + " failed" + (err != 0 ? std::string(": ") + std::strerror(err) : "");
}

// Queue pair limits: kvtier posts one work request per block and polls before the queue fills.
constexpr uint32_t kMaxSendWr = 512;
constexpr uint8_t kRdAtomic = 16;

}  // namespace

VerbsEndpoint::Registration::~Registration() {
  if (mr_ != nullptr && api_->deregMr(mr_) != 0) {
    // EBUSY only while a memory window is bound, which kvtier never does; the mapping leaks.
  }
}

VerbsEndpoint::QueuePair::~QueuePair() {
  if (qp_ != nullptr && ep_->api_->destroyQp(qp_) != 0) {
    // Nothing else can be done: the queue pair dies with the context.
  }
}

std::unique_ptr<VerbsEndpoint> VerbsEndpoint::Open(const Options& options, std::string* error) {
  shim::Verbs& verbs = shim::Verbs::instance();
  if (!verbs.status().loaded) {
    *error = "libibverbs is not loaded: " + verbs.status().reason;
    return nullptr;
  }
  const ibv::Api* api = verbs.api();
  if (api == nullptr) {
    *error = "libibverbs lacks an entry point the verbs transport needs: " + verbs.apiReason();
    return nullptr;
  }
  int count = 0;
  errno = 0;
  ibv::Device** list = api->getDeviceList(&count);
  if (list == nullptr) {
    *error = Errno("ibv_get_device_list");
    return nullptr;
  }
  std::unique_ptr<ibv::Device*, void (*)(ibv::Device**)> freeList(list, api->freeDeviceList);
  std::unique_ptr<VerbsEndpoint> ep(new VerbsEndpoint());
  ep->api_ = api;
  ep->port_ = options.port;
  ep->gidIndex_ = options.gidIndex;
  ep->cqDepth_ = options.cqDepth;
  std::string why = "no RDMA devices found";
  for (int i = 0; i < count && list[i] != nullptr; ++i) {
    const char* name = api->getDeviceName(list[i]);
    std::string dev = name != nullptr ? name : "";
    if (!options.device.empty() && dev != options.device) continue;
    ibv::Context* ctx = api->openDevice(list[i]);
    if (ctx == nullptr) {
      why = dev + ": " + Errno("ibv_open_device");
      continue;
    }
    std::vector<uint8_t> attr(ibv::kPortAttrBytes, 0);
    if (api->queryPort(ctx, options.port, attr.data()) != 0) {
      why = dev + ": " + Errno("ibv_query_port");
      (void)api->closeDevice(ctx);
      continue;
    }
    ibv::PortAttrHead head;
    std::memcpy(&head, attr.data(), sizeof(head));
    if (head.state != ibv::kPortActive) {
      why = dev + " port " + std::to_string(options.port) + " is not active";
      (void)api->closeDevice(ctx);
      continue;
    }
    ep->context_ = ctx;
    ep->device_ = dev;
    ep->lid_ = head.lid;
    ep->mtu_ = head.activeMtu;
    ep->ethernet_ = head.linkLayer == ibv::kLinkLayerEthernet;
    break;
  }
  if (ep->context_ == nullptr) {
    *error = options.device.empty() || why != "no RDMA devices found"
                 ? why
                 : "no RDMA device named " + options.device;
    return nullptr;
  }
  if (api->queryGid(ep->context_, ep->port_, ep->gidIndex_, &ep->gid_) != 0) {
    *error = ep->device_ + ": " + Errno("ibv_query_gid");
    return nullptr;
  }
  ep->pd_ = api->allocPd(ep->context_);
  if (ep->pd_ == nullptr) {
    *error = ep->device_ + ": " + Errno("ibv_alloc_pd");
    return nullptr;
  }
  ep->cq_ = api->createCq(ep->context_, ep->cqDepth_, nullptr, nullptr, 0);
  if (ep->cq_ == nullptr) {
    *error = ep->device_ + ": " + Errno("ibv_create_cq");
    return nullptr;
  }
  return ep;
}

VerbsEndpoint::~VerbsEndpoint() {
  // Reverse order of creation; queue pairs and registrations must be gone already (they are
  // owned by callers that the endpoint outlives).
  if (cq_ != nullptr && api_->destroyCq(cq_) != 0) {
    // EBUSY: a queue pair still uses it; the context's close below reclaims it.
  }
  if (pd_ != nullptr && api_->deallocPd(pd_) != 0) {
    // As above.
  }
  if (context_ != nullptr && api_->closeDevice(context_) != 0) {
    // Nothing left to do.
  }
}

std::unique_ptr<VerbsEndpoint::Registration> VerbsEndpoint::Register(void* addr, size_t len,
                                                                     int access,
                                                                     std::string* error) {
  // ibv_reg_mr refuses remote write without local write (EINVAL); say so plainly instead.
  if ((access & ibv::kAccessRemoteWrite) != 0 && (access & ibv::kAccessLocalWrite) == 0) {
    *error = "remote write access needs local write access";
    return nullptr;
  }
  ibv::Mr* mr = api_->regMr(pd_, addr, len, access);
  if (mr == nullptr) {
    *error = device_ + ": " + Errno("ibv_reg_mr");
    return nullptr;
  }
  return std::unique_ptr<Registration>(new Registration(api_, mr));
}

std::unique_ptr<VerbsEndpoint::QueuePair> VerbsEndpoint::CreateQueuePair(int remoteAccess,
                                                                         std::string* error) {
  ibv::QpInitAttr init{};
  init.sendCq = cq_;
  init.recvCq = cq_;
  init.cap.maxSendWr = kMaxSendWr;
  init.cap.maxRecvWr = 1;
  init.cap.maxSendSge = 1;
  init.cap.maxRecvSge = 1;
  init.qpType = ibv::kQptRc;
  ibv::Qp* qp = api_->createQp(pd_, &init);
  if (qp == nullptr) {
    *error = device_ + ": " + Errno("ibv_create_qp");
    return nullptr;
  }
  VerbsAddress local;
  local.lid = lid_;
  local.qpn = qp->qpNum;
  std::random_device rd;
  local.psn = rd() & 0xffffff;  // a packet sequence number is 24 bits
  std::memcpy(local.gid, gid_.raw, sizeof(local.gid));
  local.global = ethernet_;
  std::unique_ptr<QueuePair> pair(new QueuePair(this, qp, local));
  ibv::QpAttr attr{};
  attr.qpState = ibv::kQpsInit;
  attr.pkeyIndex = 0;
  attr.portNum = port_;
  // Only the remote bits mean anything to a queue pair: the responder side checks them (with the
  // registration's own flags) on every incoming READ or WRITE.
  attr.qpAccessFlags = remoteAccess & (ibv::kAccessRemoteRead | ibv::kAccessRemoteWrite);
  if (api_->modifyQp(qp, &attr,
                     ibv::kQpState | ibv::kQpPkeyIndex | ibv::kQpPort | ibv::kQpAccessFlags) != 0) {
    *error = device_ + ": " + Errno("ibv_modify_qp(INIT)");
    return nullptr;
  }
  return pair;
}

bool VerbsEndpoint::QueuePair::Connect(const VerbsAddress& remote, std::string* error) {
  const ibv::Api* api = ep_->api_;
  ibv::QpAttr rtr{};
  rtr.qpState = ibv::kQpsRtr;
  rtr.pathMtu = ep_->mtu_;
  rtr.destQpNum = remote.qpn;
  rtr.rqPsn = remote.psn;
  rtr.maxDestRdAtomic = kRdAtomic;
  rtr.minRnrTimer = 12;
  rtr.ahAttr.dlid = remote.lid;
  rtr.ahAttr.portNum = ep_->port_;
  if (remote.global || ep_->ethernet_) {
    rtr.ahAttr.isGlobal = 1;
    std::memcpy(rtr.ahAttr.grh.dgid.raw, remote.gid, sizeof(remote.gid));
    rtr.ahAttr.grh.sgidIndex = static_cast<uint8_t>(ep_->gidIndex_);
    rtr.ahAttr.grh.hopLimit = 64;
  }
  int mask = ibv::kQpState | ibv::kQpAv | ibv::kQpPathMtu | ibv::kQpDestQpn | ibv::kQpRqPsn |
             ibv::kQpMaxDestRdAtomic | ibv::kQpMinRnrTimer;
  if (api->modifyQp(qp_, &rtr, mask) != 0) {
    *error = ep_->device_ + ": " + Errno("ibv_modify_qp(RTR)");
    return false;
  }
  ibv::QpAttr rts{};
  rts.qpState = ibv::kQpsRts;
  rts.sqPsn = local_.psn;
  rts.timeout = 14;
  rts.retryCnt = 7;
  rts.rnrRetry = 7;
  rts.maxRdAtomic = kRdAtomic;
  mask = ibv::kQpState | ibv::kQpSqPsn | ibv::kQpTimeout | ibv::kQpRetryCnt | ibv::kQpRnrRetry |
         ibv::kQpMaxQpRdAtomic;
  if (api->modifyQp(qp_, &rts, mask) != 0) {
    *error = ep_->device_ + ": " + Errno("ibv_modify_qp(RTS)");
    return false;
  }
  return true;
}

bool VerbsEndpoint::QueuePair::Post(int opcode, uint64_t wrId, void* local, uint32_t lkey,
                                    uint64_t remote, uint32_t rkey, uint32_t len,
                                    std::string* error) {
  ibv::Sge sge{reinterpret_cast<uint64_t>(local), len, lkey};
  ibv::SendWr wr{};
  wr.wrId = wrId;
  wr.sgList = &sge;
  wr.numSge = 1;
  wr.opcode = opcode;
  wr.sendFlags = ibv::kSendSignaled;
  wr.wr.rdma.remoteAddr = remote;
  wr.wr.rdma.rkey = rkey;
  ibv::SendWr* bad = nullptr;
  int rc = ibv::Api::PostSend(qp_, &wr, &bad);
  if (rc != 0) {
    *error = ep_->device_ + ": ibv_post_send failed: " + std::strerror(rc);
    return false;
  }
  return true;
}

bool VerbsEndpoint::QueuePair::PostRead(uint64_t wrId, void* local, uint32_t lkey, uint64_t remote,
                                        uint32_t rkey, uint32_t len, std::string* error) {
  return Post(ibv::kWrRdmaRead, wrId, local, lkey, remote, rkey, len, error);
}

bool VerbsEndpoint::QueuePair::PostWrite(uint64_t wrId, void* local, uint32_t lkey, uint64_t remote,
                                         uint32_t rkey, uint32_t len, std::string* error) {
  return Post(ibv::kWrRdmaWrite, wrId, local, lkey, remote, rkey, len, error);
}

bool VerbsEndpoint::QueuePair::Fail(std::string* error) {
  ibv::QpAttr attr{};
  attr.qpState = ibv::kQpsErr;
  if (ep_->api_->modifyQp(qp_, &attr, ibv::kQpState) != 0) {
    *error = ep_->device_ + ": " + Errno("ibv_modify_qp(ERR)");
    return false;
  }
  return true;
}

int VerbsEndpoint::Poll(ibv::Wc* wcs, int n, std::string* error) {
  int got = ibv::Api::PollCq(cq_, n, wcs);
  if (got < 0) *error = device_ + ": ibv_poll_cq failed";
  return got;
}

}  // namespace kvtier
