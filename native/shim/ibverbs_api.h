// The libibverbs data-path API kvtier uses, declared here from the rdma-core man pages
// (ibv_open_device(3), ibv_alloc_pd(3), ibv_reg_mr(3), ibv_create_cq(3), ibv_create_qp(3),
// ibv_modify_qp(3), ibv_post_send(3), ibv_poll_cq(3), ibv_query_port(3)) so the addon builds
// without infiniband/verbs.h and loads without libibverbs. The layouts are the library's stable
// ABI (IBVERBS_1.1); test/native/verbs-abi.test.ts checks every size, offset and constant below
// against the system header wherever one is installed (always in CI).
#pragma once
#include <cstddef>
#include <cstdint>

namespace kvtier::shim::ibv {

struct Device;
struct Context;
struct Pd;
struct Cq;
struct CompChannel;
struct Srq;

struct Mr {
  Context* context;
  Pd* pd;
  void* addr;
  size_t length;
  uint32_t handle;
  uint32_t lkey;
  uint32_t rkey;
};

// Only the leading members kvtier reads; the library owns the rest.
struct Qp {
  Context* context;
  void* qpContext;
  Pd* pd;
  Cq* sendCq;
  Cq* recvCq;
  Srq* srq;
  uint32_t handle;
  uint32_t qpNum;
};

struct QpCap {
  uint32_t maxSendWr;
  uint32_t maxRecvWr;
  uint32_t maxSendSge;
  uint32_t maxRecvSge;
  uint32_t maxInlineData;
};

struct QpInitAttr {
  void* qpContext;
  Cq* sendCq;
  Cq* recvCq;
  Srq* srq;
  QpCap cap;
  int qpType;
  int sqSigAll;
};

union Gid {
  uint8_t raw[16];
  struct {
    uint64_t subnetPrefix;
    uint64_t interfaceId;
  } global;
};

struct GlobalRoute {
  Gid dgid;
  uint32_t flowLabel;
  uint8_t sgidIndex;
  uint8_t hopLimit;
  uint8_t trafficClass;
};

struct AhAttr {
  GlobalRoute grh;
  uint16_t dlid;
  uint8_t sl;
  uint8_t srcPathBits;
  uint8_t staticRate;
  uint8_t isGlobal;
  uint8_t portNum;
};

struct QpAttr {
  int qpState;
  int curQpState;
  int pathMtu;
  int pathMigState;
  uint32_t qkey;
  uint32_t rqPsn;
  uint32_t sqPsn;
  uint32_t destQpNum;
  unsigned int qpAccessFlags;
  QpCap cap;
  AhAttr ahAttr;
  AhAttr altAhAttr;
  uint16_t pkeyIndex;
  uint16_t altPkeyIndex;
  uint8_t enSqdAsyncNotify;
  uint8_t sqDraining;
  uint8_t maxRdAtomic;
  uint8_t maxDestRdAtomic;
  uint8_t minRnrTimer;
  uint8_t portNum;
  uint8_t timeout;
  uint8_t retryCnt;
  uint8_t rnrRetry;
  uint8_t altPortNum;
  uint8_t altTimeout;
  uint32_t rateLimit;
};

struct Sge {
  uint64_t addr;
  uint32_t length;
  uint32_t lkey;
};

struct SendWr {
  uint64_t wrId;
  SendWr* next;
  Sge* sgList;
  int numSge;
  int opcode;
  unsigned int sendFlags;
  uint32_t immData;
  union {
    struct {
      uint64_t remoteAddr;
      uint32_t rkey;
    } rdma;
    struct {
      uint64_t remoteAddr;
      uint64_t compareAdd;
      uint64_t swap;
      uint32_t rkey;
    } atomic;
  } wr;
  uint32_t qpTypeXrcRemoteSrqn;
  // bind_mw / tso: unused by kvtier, sized as the library's union.
  union {
    struct {
      void* mw;
      uint32_t rkey;
      struct {
        Mr* mr;
        uint64_t addr;
        uint64_t length;
        unsigned int mwAccessFlags;
      } bindInfo;
    } bindMw;
    struct {
      void* hdr;
      uint16_t hdrSz;
      uint16_t mss;
    } tso;
  } extra;
};

struct Wc {
  uint64_t wrId;
  int status;
  int opcode;
  uint32_t vendorErr;
  uint32_t byteLen;
  uint32_t immData;
  uint32_t qpNum;
  uint32_t srcQp;
  unsigned int wcFlags;
  uint16_t pkeyIndex;
  uint16_t slid;
  uint8_t sl;
  uint8_t dlidPathBits;
};

// ibv_query_port fills the library's port attributes; kvtier reads these leading fields.
struct PortAttrHead {
  int state;
  int maxMtu;
  int activeMtu;
  int gidTblLen;
  uint32_t portCapFlags;
  uint32_t maxMsgSz;
  uint32_t badPkeyCntr;
  uint32_t qkeyViolCntr;
  uint16_t pkeyTblLen;
  uint16_t lid;
  uint16_t smLid;
  uint8_t lmc;
  uint8_t maxVlNum;
  uint8_t smSl;
  uint8_t subnetTimeout;
  uint8_t initTypeReply;
  uint8_t activeWidth;
  uint8_t activeSpeed;
  uint8_t physState;
  uint8_t linkLayer;
};
// Room for the whole structure of any library version: kvtier hands this much to ibv_query_port.
inline constexpr size_t kPortAttrBytes = 256;

// post_send and poll_cq are inline functions in verbs.h that call through the context's
// operation table; these are their slots in that table (ABI: struct ibv_context_ops).
inline constexpr size_t kOpsPollCq = 11;
inline constexpr size_t kOpsPostSend = 25;
inline constexpr size_t kOpsCount = 32;
struct ContextHead {
  Device* device;
  void* ops[kOpsCount];
};

inline constexpr int kQptRc = 2;
inline constexpr int kQpsReset = 0;
inline constexpr int kQpsInit = 1;
inline constexpr int kQpsRtr = 2;
inline constexpr int kQpsRts = 3;
inline constexpr int kQpsErr = 6;
inline constexpr int kWrRdmaWrite = 0;
inline constexpr int kWrRdmaRead = 4;
inline constexpr unsigned kSendSignaled = 1u << 1;
inline constexpr int kAccessLocalWrite = 1;
inline constexpr int kAccessRemoteWrite = 1 << 1;
inline constexpr int kAccessRemoteRead = 1 << 2;
inline constexpr int kPortActive = 4;
inline constexpr int kLinkLayerEthernet = 2;
inline constexpr int kWcSuccess = 0;
inline constexpr int kWcLocProtErr = 4;
inline constexpr int kWcWrFlushErr = 5;
inline constexpr int kWcRemAccessErr = 10;
inline constexpr int kWcRetryExcErr = 12;
inline constexpr int kMtu1024 = 3;

inline constexpr int kQpState = 1 << 0;
inline constexpr int kQpAccessFlags = 1 << 3;
inline constexpr int kQpPkeyIndex = 1 << 4;
inline constexpr int kQpPort = 1 << 5;
inline constexpr int kQpAv = 1 << 7;
inline constexpr int kQpPathMtu = 1 << 8;
inline constexpr int kQpTimeout = 1 << 9;
inline constexpr int kQpRetryCnt = 1 << 10;
inline constexpr int kQpRnrRetry = 1 << 11;
inline constexpr int kQpRqPsn = 1 << 12;
inline constexpr int kQpMaxQpRdAtomic = 1 << 13;
inline constexpr int kQpMinRnrTimer = 1 << 15;
inline constexpr int kQpSqPsn = 1 << 16;
inline constexpr int kQpMaxDestRdAtomic = 1 << 17;
inline constexpr int kQpDestQpn = 1 << 20;

// The entry points, resolved with dlsym from libibverbs.so.1 (default symbol versions).
struct Api {
  Device** (*getDeviceList)(int* num);
  void (*freeDeviceList)(Device** list);
  const char* (*getDeviceName)(Device* device);
  Context* (*openDevice)(Device* device);
  int (*closeDevice)(Context* context);
  int (*queryPort)(Context* context, uint8_t port, void* attr);
  int (*queryGid)(Context* context, uint8_t port, int index, Gid* gid);
  Pd* (*allocPd)(Context* context);
  int (*deallocPd)(Pd* pd);
  Mr* (*regMr)(Pd* pd, void* addr, size_t length, int access);
  int (*deregMr)(Mr* mr);
  Cq* (*createCq)(Context* context, int cqe, void* cqContext, CompChannel* channel, int vector);
  int (*destroyCq)(Cq* cq);
  Qp* (*createQp)(Pd* pd, QpInitAttr* attr);
  int (*destroyQp)(Qp* qp);
  int (*modifyQp)(Qp* qp, QpAttr* attr, int mask);

  // The two inline verbs, through the operation table of the object's context.
  static int PostSend(Qp* qp, SendWr* wr, SendWr** bad) {
    auto* head = reinterpret_cast<ContextHead*>(qp->context);
    auto fn = reinterpret_cast<int (*)(Qp*, SendWr*, SendWr**)>(head->ops[kOpsPostSend]);
    return fn(qp, wr, bad);
  }
  static int PollCq(Cq* cq, int n, Wc* wc) {
    // struct ibv_cq begins with its context, as struct ibv_qp does.
    auto* head = reinterpret_cast<ContextHead*>(*reinterpret_cast<Context**>(cq));
    auto fn = reinterpret_cast<int (*)(Cq*, int, Wc*)>(head->ops[kOpsPollCq]);
    return fn(cq, n, wc);
  }
};

}  // namespace kvtier::shim::ibv
