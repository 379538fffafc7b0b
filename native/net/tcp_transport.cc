#include "tcp_transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <utility>

#include "../common/args.h"
#include "../common/crc32c.h"
#include "../common/errors.h"
#include "../common/instance_data.h"
#include "../memory/region.h"

namespace kvtier {

namespace {

// Reads below this many bytes go through the staging buffer (fewer system calls for small frames);
// larger payload remainders are read straight into their destination.
constexpr size_t kStageBytes = 64 * 1024;
constexpr size_t kDirectReadMin = 16 * 1024;
// One connection yields the thread after this many bytes, so a fast sender cannot starve others.
constexpr size_t kReadBudget = 8 * 1024 * 1024;
// Low-water mark while a payload is incomplete (WaitFor): payloads still owing less than kLowatMin
// wait as usual; larger ones wake the thread once min(what is owed, kLowatMax) bytes are queued.
constexpr uint64_t kLowatMin = 64 * 1024;
constexpr uint64_t kLowatMax = 256 * 1024;
constexpr int kMaxIov = 64;
// Epoll user data: the kind of object in the top half, its id in the bottom half.
constexpr uint64_t kTagWake = 0;
constexpr uint64_t kTagListener = 1;
constexpr uint64_t kTagConn = 2;
// Pause after accept() ran out of descriptors, so a level-triggered listener does not spin.
constexpr int kAcceptPauseMs = 100;
// Stalled frames (payloadTimeoutMs) are looked for this often at most, and at least four times
// per timeout.
constexpr uint64_t kSweepMaxMs = 1000;
constexpr uint64_t kSweepMinMs = 5;

uint64_t Tag(uint64_t kind, uint32_t id) { return (kind << 32) | id; }

void RaiseTo(std::atomic<uint64_t>& high, uint64_t v) {
  if (v > high.load(std::memory_order_relaxed)) high.store(v, std::memory_order_relaxed);
}

std::string AddressText(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {0};
  uint16_t port = 0;
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf));
    port = ntohs(a->sin_port);
    return std::string(buf) + ":" + std::to_string(port);
  }
  if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf));
    port = ntohs(a->sin6_port);
    return "[" + std::string(buf) + "]:" + std::to_string(port);
  }
  return "unknown";
}

// Numeric addresses only: names are resolved in JavaScript (dns.lookup), off this thread.
bool ParseAddress(const std::string& host, uint16_t port, sockaddr_storage* ss, socklen_t* len) {
  std::memset(ss, 0, sizeof(*ss));
  auto* v4 = reinterpret_cast<sockaddr_in*>(ss);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    *len = sizeof(sockaddr_in);
    return true;
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(ss);
  if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    *len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

void NoDelay(int fd) {
  int one = 1;
  // Best effort: a socket without it is slower for small frames, not wrong.
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) {
    reset();
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

void Fd::reset() {
  if (fd_ >= 0) {
    // close() errors on a socket carry nothing actionable; the descriptor is gone either way.
    (void)::close(fd_);
    fd_ = -1;
  }
}

struct TcpTransport::Listener {
  uint32_t id = 0;
  Fd fd;
  std::chrono::steady_clock::time_point pausedUntil{};
  bool paused = false;
};

struct TcpTransport::Conn {
  uint32_t id = 0;
  Fd fd;
  bool connecting = false;
  bool accepted = false;
  // Limits raised (setLimits): for an accepted connection, the peer has authenticated.
  bool limited = false;
  uint64_t handshakeSeq = 0;  // its key in handshaking_ while accepted and not limited
  uint32_t interest = 0;

  FrameReader reader;          // limits: nothing but a handshake fits until JavaScript raises them
  uint8_t* payload = nullptr;  // malloc'd or a receive area, when not placed
  bool inArea = false;
  Area area{nullptr, 0, 0};
  std::vector<Area> landed;  // landing pieces the current payload goes to
  bool placed = false;       // the payload goes to destinations (an expectation or landing)
  std::unordered_map<uint32_t, Expect> expects;
  std::chrono::steady_clock::time_point lastByte{};  // when a byte last arrived

  int lowat = 1;  // SO_RCVLOWAT now set on the socket
  // Backpressure. `held`: bytes of frames handed to JavaScript and not yet released by it (their
  // metadata and payload, and for requests that cause large answers, a GET, the most answer bytes
  // they can cause until JavaScript has queued the answer). `outQueued`: bytes queued to write.
  // Past maxQueued together the connection is not read (paused) until they drain to half, so a
  // peer that sends faster than JavaScript serves it, or does not read its answers, is held back
  // by TCP's flow control rather than buffered.
  uint64_t held = 0;
  uint64_t outQueued = 0;
  uint64_t maxQueued = UINT64_MAX;
  uint8_t answerType = 0;   // the request type whose answers are reserved for (0: none)
  uint64_t answerUnit = 0;  // bytes reserved per key of such a request
  bool paused = false;

  std::vector<uint8_t> stage;
  size_t stageHead = 0;
  size_t stageTail = 0;
  std::deque<OutMsg> out;

  ~Conn() {
    if (!inArea) std::free(payload);
  }
  uint64_t OutBytes() const {
    uint64_t n = 0;
    for (const OutMsg& m : out) n += m.total - m.done;
    return n;
  }
};

struct TcpTransport::Command {
  enum Kind { kAddListener, kAddConn, kSend, kLimits, kRelease, kCloseConn, kCloseListener };
  Kind kind = kSend;
  uint32_t id = 0;
  Fd fd;
  bool connecting = false;
  OutMsg msg;
  bool hasExpect = false;
  uint32_t expectId = 0;
  Expect expect;
  uint32_t maxMeta = 0;
  uint64_t maxPayload = 0;  // kLimits; kRelease: the bytes released
  uint64_t maxQueued = UINT64_MAX;
  uint8_t answerType = 0;
  uint64_t answerUnit = 0;
  std::string why;
};

Napi::Function TcpTransport::Define(Napi::Env env) {
  return DefineClass(
      env, "NativeTcpTransport",
      {InstanceMethod<&TcpTransport::Listen>("listen"),
       InstanceMethod<&TcpTransport::Connect>("connect"),
       InstanceMethod<&TcpTransport::Send>("send"),
       InstanceMethod<&TcpTransport::SetLimits>("setLimits"),
       InstanceMethod<&TcpTransport::Provide>("provide"),
       InstanceMethod<&TcpTransport::Land>("land"), InstanceMethod<&TcpTransport::Unland>("unland"),
       InstanceMethod<&TcpTransport::Release>("release"),
       InstanceMethod<&TcpTransport::CloseConn>("closeConnection"),
       InstanceMethod<&TcpTransport::CloseListener>("closeListener"),
       InstanceMethod<&TcpTransport::RefJs>("ref"), InstanceMethod<&TcpTransport::UnrefJs>("unref"),
       InstanceMethod<&TcpTransport::Close>("close"),
       InstanceMethod<&TcpTransport::Stats>("stats")});
}

// new NativeTcpTransport({ maxConnections, maxHandshakes, payloadTimeoutMs }, onEvents(events[]))
TcpTransport::TcpTransport(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TcpTransport>(info) {
  Napi::Env env = info.Env();
  env_ = env;
  Napi::Object opts = info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(env);
  if (!info[1].IsFunction()) Throw(env, kBadArgument, "the transport needs an event callback");
  Napi::Value mc = opts.Get("maxConnections");
  if (!mc.IsUndefined()) {
    uint64_t n = ByteCountArg(env, mc, "maxConnections");
    if (n < 1 || n > 65536) Throw(env, kBadArgument, "maxConnections must be 1 to 65536");
    maxConnections_ = static_cast<uint32_t>(n);
  }
  Napi::Value mh = opts.Get("maxHandshakes");
  if (!mh.IsUndefined()) {
    uint64_t n = ByteCountArg(env, mh, "maxHandshakes");
    if (n < 1 || n > 65536) Throw(env, kBadArgument, "maxHandshakes must be 1 to 65536");
    maxHandshakes_ = static_cast<uint32_t>(n);
  }
  Napi::Value pt = opts.Get("payloadTimeoutMs");
  if (!pt.IsUndefined()) {
    payloadTimeoutMs_ = ByteCountArg(env, pt, "payloadTimeoutMs");
    if (payloadTimeoutMs_ > 24ull * 3600 * 1000) {
      Throw(env, kBadArgument, "payloadTimeoutMs must be at most a day");
    }
  }
  epoll_ = Fd(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_.valid()) Throw(env, kIo, "cannot create an epoll instance", errno, "epoll_create1");
  wake_ = Fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake_.valid()) Throw(env, kIo, "cannot create an eventfd", errno, "eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = Tag(kTagWake, 0);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev) != 0) {
    Throw(env, kIo, "cannot watch the eventfd", errno, "epoll_ctl");
  }
  tsfn_ = Tsfn::New(env, info[1].As<Napi::Function>(), "kvtier-net", 0, 1, this);
  tsfn_.Unref(env);  // JavaScript refs it while it listens or waits for answers
  try {
    thread_ = std::thread([this] { Run(); });
  } catch (const std::exception& e) {
    tsfn_.Release();
    Throw(env, kIo, std::string("cannot start the network thread: ") + e.what());
  }
  if (napi_add_env_cleanup_hook(env, CleanupHook, this) == napi_ok) cleanupHooked_ = true;
}

TcpTransport::~TcpTransport() {
  Shutdown();
  if (cleanupHooked_) {
    (void)napi_remove_env_cleanup_hook(env_, CleanupHook, this);
    cleanupHooked_ = false;
  }
}

void TcpTransport::CleanupHook(void* arg) {
  auto* self = static_cast<TcpTransport*>(arg);
  self->cleanupHooked_ = false;
  self->Shutdown();
}

void TcpTransport::Shutdown() {
  if (closed_) return;
  closed_ = true;
  stop_.store(true);
  uint64_t one = 1;
  if (wake_.valid() && write(wake_.get(), &one, sizeof(one)) < 0) {
    // The eventfd counter cannot overflow here; a failed wake would only delay the join.
  }
  if (thread_.joinable()) thread_.join();
  tsfn_.Release();
}

void TcpTransport::Post(std::unique_ptr<Command> cmd) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    commands_.push_back(std::move(cmd));
    // One wakeup per batch of commands: the sends JavaScript makes in one turn of its loop cost
    // one eventfd write and one epoll wakeup, not one each.
    wake = commands_.size() == 1;
  }
  if (!wake) return;
  uint64_t one = 1;
  if (write(wake_.get(), &one, sizeof(one)) < 0) {
    // EAGAIN only when the counter is saturated, which means a wakeup is already pending.
  }
}

// ------------------------------------------------------------------------------ main thread API

// listen(host, port, backlog) -> { id, port }
Napi::Value TcpTransport::Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) Throw(env, kClosed, "transport is closed");
  if (!info[0].IsString()) Throw(env, kBadArgument, "host must be a numeric address string");
  std::string host = info[0].As<Napi::String>().Utf8Value();
  uint64_t port = ByteCountArg(env, info[1], "port");
  uint64_t backlog = info[2].IsUndefined() ? 128 : ByteCountArg(env, info[2], "backlog");
  if (port > 65535) Throw(env, kBadArgument, "port must be 0 to 65535");
  sockaddr_storage ss;
  socklen_t len = 0;
  if (!ParseAddress(host, static_cast<uint16_t>(port), &ss, &len)) {
    Throw(env, kBadArgument, "not a numeric IPv4 or IPv6 address: " + host);
  }
  Fd fd(socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) Throw(env, kIo, "cannot create a socket", errno, "socket");
  int one = 1;
  if (setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
    Throw(env, kIo, "cannot set SO_REUSEADDR", errno, "setsockopt");
  }
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    Throw(env, kIo, "cannot listen on " + host + ":" + std::to_string(port), errno, "bind");
  }
  if (listen(fd.get(), static_cast<int>(backlog > 4096 ? 4096 : backlog)) != 0) {
    Throw(env, kIo, "cannot listen on " + host, errno, "listen");
  }
  sockaddr_storage bound;
  socklen_t boundLen = sizeof(bound);
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &boundLen) != 0) {
    Throw(env, kIo, "cannot read the bound address", errno, "getsockname");
  }
  uint16_t boundPort = bound.ss_family == AF_INET
                           ? ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port)
                           : ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  auto cmd = std::make_unique<Command>();
  cmd->kind = Command::kAddListener;
  cmd->id = nextId_.fetch_add(1);
  cmd->fd = std::move(fd);
  uint32_t id = cmd->id;
  Post(std::move(cmd));
  Napi::Object r = Napi::Object::New(env);
  r.Set("id", Napi::Number::New(env, id));
  r.Set("port", Napi::Number::New(env, boundPort));
  return r;
}

// connect(host, port) -> id; a kConnected or kClosed event follows.
Napi::Value TcpTransport::Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) Throw(env, kClosed, "transport is closed");
  if (!info[0].IsString()) Throw(env, kBadArgument, "host must be a numeric address string");
  std::string host = info[0].As<Napi::String>().Utf8Value();
  uint64_t port = ByteCountArg(env, info[1], "port");
  if (port < 1 || port > 65535) Throw(env, kBadArgument, "port must be 1 to 65535");
  sockaddr_storage ss;
  socklen_t len = 0;
  if (!ParseAddress(host, static_cast<uint16_t>(port), &ss, &len)) {
    Throw(env, kBadArgument, "not a numeric IPv4 or IPv6 address: " + host);
  }
  Fd fd(socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) Throw(env, kIo, "cannot create a socket", errno, "socket");
  NoDelay(fd.get());
  bool connecting = false;
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    if (errno != EINPROGRESS) {
      Throw(env, kPeer, "cannot connect to " + host + ":" + std::to_string(port), errno, "connect");
    }
    connecting = true;
  }
  auto cmd = std::make_unique<Command>();
  cmd->kind = Command::kAddConn;
  cmd->id = nextId_.fetch_add(1);
  cmd->fd = std::move(fd);
  cmd->connecting = connecting;
  uint32_t id = cmd->id;
  Post(std::move(cmd));
  return Napi::Number::New(env, id);
}

namespace {

// The memory of one send or receive target: a native region or a JavaScript buffer. The caller
// keeps the object (and a region's in-flight count) until the matching kSent or kClosed event.
struct Mem {
  uint8_t* data;
  uint64_t size;
};

Mem TargetOf(Napi::Env env, Napi::Value v, uint32_t i) {
  InstanceData& data = InstanceData::Get(env);
  std::string what = "target " + std::to_string(i);
  if (v.IsObject() && v.As<Napi::Object>().InstanceOf(data.regionCtor.Value())) {
    void* raw = nullptr;
    if (napi_unwrap(env, v, &raw) != napi_ok || raw == nullptr) {
      Throw(env, kBadArgument, what + " is not a kvtier object");
    }
    std::shared_ptr<RegionMemory> m = static_cast<Region*>(raw)->memory();
    if (!m) Throw(env, kClosed, what + " is a closed region");
    return {m->data(), m->size()};
  }
  if (v.IsTypedArray()) {
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    Napi::ArrayBuffer ab = ta.ArrayBuffer();
    if (ab.IsDetached()) Throw(env, kBadArgument, what + " is detached");
    return {static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset(), ta.ByteLength()};
  }
  if (v.IsArrayBuffer()) {
    Napi::ArrayBuffer ab = v.As<Napi::ArrayBuffer>();
    if (ab.IsDetached()) Throw(env, kBadArgument, what + " is detached");
    return {static_cast<uint8_t*>(ab.Data()), ab.ByteLength()};
  }
  Throw(env, kBadArgument, what + " must be a region, a TypedArray or an ArrayBuffer");
}

// (target index, offset, length) triples into spans, every one checked against its target.
std::vector<TcpTransport::Span> Spans(Napi::Env env, const std::vector<Mem>& mems, Napi::Value v,
                                      uint64_t* total) {
  std::vector<TcpTransport::Span> spans;
  *total = 0;
  if (v.IsUndefined() || v.IsNull()) return spans;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    Throw(env, kBadArgument, "spans must be a Float64Array");
  }
  Napi::Float64Array a = v.As<Napi::Float64Array>();
  if (a.ElementLength() % 3 != 0) Throw(env, kBadArgument, "spans come in threes");
  for (size_t i = 0; i < a.ElementLength(); i += 3) {
    double t = a[i];
    if (!IsByteCount(t) || t >= static_cast<double>(mems.size())) {
      Throw(env, kBadArgument, "span target index out of range");
    }
    if (!IsByteCount(a[i + 1]) || !IsByteCount(a[i + 2])) {
      Throw(env, kBadArgument, "span offsets and lengths must be non-negative safe integers");
    }
    const Mem& m = mems[static_cast<size_t>(t)];
    auto off = static_cast<uint64_t>(a[i + 1]);
    auto len = static_cast<uint64_t>(a[i + 2]);
    if (off > m.size || len > m.size - off) {
      Throw(env, kBadArgument,
            std::to_string(len) + " bytes at offset " + std::to_string(off) + " do not fit a " +
                "target of " + std::to_string(m.size) + " bytes");
    }
    if (len > 0) spans.push_back({m.data + off, len});
    *total += len;
  }
  return spans;
}

}  // namespace

// send(conn, head: Uint8Array, targets[], spans: Float64Array, token, notify,
//      expectType?, expectRequestId?, expectSpans?: Float64Array) -> void
// head holds the frame header and metadata; the spans are the payload. The expectation, when
// given, says where the payload of the answer to expectRequestId goes.
Napi::Value TcpTransport::Send(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) Throw(env, kClosed, "transport is closed");
  uint64_t conn = ByteCountArg(env, info[0], "connection");
  if (!info[1].IsTypedArray()) Throw(env, kBadArgument, "head must be a Uint8Array");
  if (!info[2].IsArray()) Throw(env, kBadArgument, "targets must be an array");
  Napi::Array list = info[2].As<Napi::Array>();
  std::vector<Napi::Value> values;
  for (uint32_t i = 0; i < list.Length(); ++i) values.push_back(list.Get(i));
  // Pointers only after every getter has run, so no script can detach a buffer in between.
  std::vector<Mem> mems;
  for (uint32_t i = 0; i < values.size(); ++i) mems.push_back(TargetOf(env, values[i], i));
  auto cmd = std::make_unique<Command>();
  cmd->kind = Command::kSend;
  cmd->id = static_cast<uint32_t>(conn);
  Napi::TypedArray head = info[1].As<Napi::TypedArray>();
  if (head.ArrayBuffer().IsDetached()) Throw(env, kBadArgument, "head is detached");
  const auto* hp = static_cast<const uint8_t*>(head.ArrayBuffer().Data()) + head.ByteOffset();
  cmd->msg.head.assign(hp, hp + head.ByteLength());
  uint64_t total = 0;
  cmd->msg.spans = Spans(env, mems, info[3], &total);
  cmd->msg.total = cmd->msg.head.size() + total;
  cmd->msg.token =
      info[4].IsUndefined() ? 0 : static_cast<uint32_t>(ByteCountArg(env, info[4], "token"));
  cmd->msg.notify = info[5].IsBoolean() && info[5].As<Napi::Boolean>().Value();
  if (!info[6].IsUndefined()) {
    uint64_t type = ByteCountArg(env, info[6], "expectType");
    uint64_t rid = ByteCountArg(env, info[7], "expectRequestId");
    if (type > 255 || rid > 0xffffffffu) Throw(env, kBadArgument, "expectation out of range");
    cmd->hasExpect = true;
    cmd->expectId = static_cast<uint32_t>(rid);
    cmd->expect.type = static_cast<uint8_t>(type);
    if (!info[8].IsTypedArray()) Throw(env, kBadArgument, "an expectation needs its spans");
    uint64_t ignored = 0;
    (void)Spans(env, mems, info[8], &ignored);  // checks every span
    // Spans are kept per descriptor, zero-length ones included, so indexes match the answer's.
    Napi::Float64Array a = info[8].As<Napi::Float64Array>();
    cmd->expect.spans.clear();
    for (size_t i = 0; i < a.ElementLength(); i += 3) {
      const Mem& m = mems[static_cast<size_t>(a[i])];
      cmd->expect.spans.push_back(
          {m.data + static_cast<uint64_t>(a[i + 1]), static_cast<uint64_t>(a[i + 2])});
    }
  }
  Post(std::move(cmd));
  return env.Undefined();
}

// (target, offset, length, token) of provide() and land(): memory inside its target, named by a
// 32-bit token. The caller keeps the target open while the transport holds it.
TcpTransport::Area TcpTransport::AreaArgs(Napi::Env env, const Napi::CallbackInfo& info,
                                          const char* what) {
  Mem m = TargetOf(env, info[0], 0);
  uint64_t off = ByteCountArg(env, info[1], "offset");
  uint64_t len = ByteCountArg(env, info[2], "length");
  uint64_t token = ByteCountArg(env, info[3], "token");
  if (off > m.size || len > m.size - off || len == 0 || token > 0xffffffffu) {
    Throw(env, kBadArgument, std::string(what) + " must lie inside its region");
  }
  return {m.data + off, len, static_cast<uint32_t>(token)};
}

// provide(region, offset, length, token): memory the transport may receive one payload into (the
// first area large enough, else a fresh allocation). A frame received there names the token; the
// area is the caller's again until it provides it anew.
Napi::Value TcpTransport::Provide(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) Throw(env, kClosed, "transport is closed");
  Area a = AreaArgs(env, info, "a receive area");
  std::lock_guard<std::mutex> lock(areasMu_);
  areas_.push_back(a);
  return env.Undefined();
}

bool TcpTransport::TakeArea(uint64_t len, Area* out) {
  std::lock_guard<std::mutex> lock(areasMu_);
  for (size_t i = 0; i < areas_.size(); ++i) {
    if (areas_[i].len >= len) {
      *out = areas_[i];
      areas_[i] = areas_.back();
      areas_.pop_back();
      return true;
    }
  }
  return false;
}

void TcpTransport::ReturnArea(const Area& a) {
  std::lock_guard<std::mutex> lock(areasMu_);
  areas_.push_back(a);
}

// land(target, offset, length, token, type): a landing piece. Every piece has the same length (the
// store's block size) and serves frames of one type: a payload of k such lengths in a frame of
// that type, with k pieces free, is read one block per piece, and its frame names the pieces'
// tokens in order. Each is the caller's again from then, until it lands it anew; unland() takes
// back the pieces no payload holds.
Napi::Value TcpTransport::Land(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) Throw(env, kClosed, "transport is closed");
  Area a = AreaArgs(env, info, "a landing piece");
  uint64_t type = ByteCountArg(env, info[4], "type");
  if (type == 0 || type > 0xff) Throw(env, kBadArgument, "type must be a frame type, 1 to 255");
  std::lock_guard<std::mutex> lock(areasMu_);
  if ((landingLen_ != 0 && a.len != landingLen_) || (landingType_ != 0 && type != landingType_)) {
    Throw(env, kBadArgument, "every landing piece must have the same length and frame type");
  }
  landingLen_ = a.len;
  landingType_ = static_cast<uint8_t>(type);
  landing_.push_back(a);
  return env.Undefined();
}

// unland(): the tokens of the landing pieces no payload holds, which are the caller's again.
Napi::Value TcpTransport::Unland(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<Area> taken;
  {
    std::lock_guard<std::mutex> lock(areasMu_);
    taken.swap(landing_);
  }
  Napi::Array out = Napi::Array::New(env, taken.size());
  for (size_t i = 0; i < taken.size(); ++i) out[i] = Napi::Number::New(env, taken[i].token);
  return out;
}

bool TcpTransport::TakeLanding(uint8_t type, uint64_t len, std::vector<Area>* out) {
  std::lock_guard<std::mutex> lock(areasMu_);
  if (type != landingType_ || landingLen_ == 0 || len == 0 || len % landingLen_ != 0) return false;
  uint64_t count = len / landingLen_;
  if (count > landing_.size()) return false;
  out->assign(landing_.end() - static_cast<std::ptrdiff_t>(count), landing_.end());
  landing_.resize(landing_.size() - count);
  counters_.landingTaken.fetch_add(count, std::memory_order_relaxed);
  return true;
}

void TcpTransport::ReturnLanding(std::vector<Area>* pieces) {
  std::lock_guard<std::mutex> lock(areasMu_);
  counters_.landingReturned.fetch_add(pieces->size(), std::memory_order_relaxed);
  landing_.insert(landing_.end(), pieces->begin(), pieces->end());
  pieces->clear();
}

// setLimits(conn, maxMeta, maxPayload): raised after the handshake authenticates the peer.
Napi::Value TcpTransport::SetLimits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) Throw(env, kClosed, "transport is closed");
  auto cmd = std::make_unique<Command>();
  cmd->kind = Command::kLimits;
  cmd->id = static_cast<uint32_t>(ByteCountArg(env, info[0], "connection"));
  uint64_t meta = ByteCountArg(env, info[1], "maxMeta");
  if (meta > (64u << 20)) Throw(env, kBadArgument, "maxMeta must be at most 64 MiB");
  cmd->maxMeta = static_cast<uint32_t>(meta);
  cmd->maxPayload = ByteCountArg(env, info[2], "maxPayload");
  // Optional: bytes JavaScript may hold plus bytes queued to write before the connection is
  // paused, and the request type whose answers are reserved for, at `answerUnit` bytes per key.
  cmd->maxQueued = info[3].IsUndefined() ? UINT64_MAX : ByteCountArg(env, info[3], "maxQueued");
  if (!info[4].IsUndefined()) {
    uint64_t type = ByteCountArg(env, info[4], "answerType");
    if (type > 255) Throw(env, kBadArgument, "answerType must be a frame type, 0 to 255");
    cmd->answerType = static_cast<uint8_t>(type);
    cmd->answerUnit = ByteCountArg(env, info[5], "answerUnit");
  }
  Post(std::move(cmd));
  return env.Undefined();
}

// release(conn, bytes): JavaScript is done with `bytes` it held of what it received on conn
// (backpressure, see Conn::held; each frame event says how many it holds).
Napi::Value TcpTransport::Release(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) return env.Undefined();
  auto cmd = std::make_unique<Command>();
  cmd->kind = Command::kRelease;
  cmd->id = static_cast<uint32_t>(ByteCountArg(env, info[0], "connection"));
  cmd->maxPayload = ByteCountArg(env, info[1], "bytes");
  Post(std::move(cmd));
  return env.Undefined();
}

// closeConnection(conn, why): a kClosed event follows once nothing refers to its buffers.
Napi::Value TcpTransport::CloseConn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) return env.Undefined();
  auto cmd = std::make_unique<Command>();
  cmd->kind = Command::kCloseConn;
  cmd->id = static_cast<uint32_t>(ByteCountArg(env, info[0], "connection"));
  cmd->why = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "closed locally";
  Post(std::move(cmd));
  return env.Undefined();
}

Napi::Value TcpTransport::CloseListener(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) return env.Undefined();
  auto cmd = std::make_unique<Command>();
  cmd->kind = Command::kCloseListener;
  cmd->id = static_cast<uint32_t>(ByteCountArg(env, info[0], "listener"));
  Post(std::move(cmd));
  return env.Undefined();
}

Napi::Value TcpTransport::RefJs(const Napi::CallbackInfo& info) {
  if (!closed_ && refs_++ == 0) tsfn_.Ref(info.Env());
  return info.Env().Undefined();
}

Napi::Value TcpTransport::UnrefJs(const Napi::CallbackInfo& info) {
  if (!closed_ && refs_ > 0 && --refs_ == 0) tsfn_.Unref(info.Env());
  return info.Env().Undefined();
}

// close(): closes every socket; kClosed events for the connections still arrive.
Napi::Value TcpTransport::Close(const Napi::CallbackInfo& info) {
  Shutdown();
  return info.Env().Undefined();
}

// stats(): the transport's counters (backpressure and connection limits), for tests and logs.
Napi::Value TcpTransport::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  auto set = [&](const char* name, const std::atomic<uint64_t>& v) {
    o.Set(name, Napi::Number::New(env, static_cast<double>(v.load(std::memory_order_relaxed))));
  };
  set("pauses", counters_.pauses);
  set("maxHeld", counters_.maxHeld);
  set("maxOutQueued", counters_.maxOutQueued);
  set("outQueued", counters_.outQueued);
  set("handshakesEvicted", counters_.handshakesEvicted);
  set("refused", counters_.refused);
  set("stalled", counters_.stalled);
  set("errorFrames", counters_.errorFrames);
  set("landingTaken", counters_.landingTaken);
  set("landingReturned", counters_.landingReturned);
  return o;
}

// ------------------------------------------------------------------------------ events to JS

void TcpTransport::Emit(NetEvent&& e) {
  std::lock_guard<std::mutex> lock(mu_);
  if (pending_ == nullptr) pending_ = new std::vector<NetEvent>();
  pending_->push_back(std::move(e));
}

void TcpTransport::Flush() {
  std::vector<NetEvent>* batch = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batch = pending_;
    pending_ = nullptr;
  }
  if (batch == nullptr) return;
  if (tsfn_.NonBlockingCall(batch) != napi_ok) delete batch;  // teardown: nobody to tell
}

void TcpTransport::Deliver(Napi::Env env, Napi::Function fn, TcpTransport*,
                           std::vector<NetEvent>* raw) {
  std::unique_ptr<std::vector<NetEvent>> events(raw);
  if (env == nullptr) return;
  Napi::Array list = Napi::Array::New(env, events->size());
  uint32_t i = 0;
  for (NetEvent& e : *events) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("kind", Napi::Number::New(env, e.kind));
    o.Set("conn", Napi::Number::New(env, e.conn));
    switch (e.kind) {
      case NetEvent::kAccepted:
      case NetEvent::kRefused:
        o.Set("listener", Napi::Number::New(env, e.listener));
        o.Set("text", Napi::String::New(env, e.text));
        if (e.err != 0) o.Set("errno", Napi::Number::New(env, e.err));
        break;
      case NetEvent::kFrame: {
        o.Set("type", Napi::Number::New(env, e.type));
        o.Set("flags", Napi::Number::New(env, e.flags));
        o.Set("requestId", Napi::Number::New(env, e.requestId));
        o.Set("meta", Napi::Buffer<uint8_t>::Copy(env, e.meta.data(), e.meta.size()));
        o.Set("placed", Napi::Boolean::New(env, e.placed));
        if (e.area >= 0) o.Set("area", Napi::Number::New(env, static_cast<double>(e.area)));
        if (!e.landed.empty()) {
          Napi::Uint32Array tokens = Napi::Uint32Array::New(env, e.landed.size());
          for (size_t k = 0; k < e.landed.size(); ++k) tokens[k] = e.landed[k];
          o.Set("landed", tokens);
        }
        if (e.held > 0) o.Set("held", Napi::Number::New(env, static_cast<double>(e.held)));
        if (!e.checksums.empty()) {
          Napi::Uint32Array crcs = Napi::Uint32Array::New(env, e.checksums.size());
          for (size_t k = 0; k < e.checksums.size(); ++k) crcs[k] = e.checksums[k];
          o.Set("checksums", crcs);
        }
        o.Set("payloadBytes", Napi::Number::New(env, static_cast<double>(e.payloadBytes)));
        if (e.payload != nullptr) {
          uint8_t* p = e.payload.release();  // owned by the Buffer from here
          // Told to the garbage collector, so unreferenced payloads are collected under load.
          auto bytes = static_cast<int64_t>(e.payloadBytes);
          Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
          o.Set("payload", Napi::Buffer<uint8_t>::New(
                               env, p, e.payloadBytes, [bytes](Napi::Env fenv, uint8_t* d) {
                                 std::free(d);
                                 Napi::MemoryManagement::AdjustExternalMemory(fenv, -bytes);
                               }));
        }
        break;
      }
      case NetEvent::kSent:
        o.Set("token", Napi::Number::New(env, e.token));
        break;
      case NetEvent::kClosed:
        o.Set("errno", Napi::Number::New(env, e.err));
        o.Set("text", Napi::String::New(env, e.text));
        break;
      default:
        break;
    }
    list.Set(i++, o);
  }
  fn.Call({list});
}

// ------------------------------------------------------------------------------ epoll thread

void TcpTransport::Run() {
  // Nothing may escape this thread: an exception here would terminate the process.
  try {
    epoll_event evs[64];
    while (!stop_.load()) {
      int n = epoll_wait(epoll_.get(), evs, 64, WaitTimeout());
      if (n < 0 && errno != EINTR) break;
      SweepStalled();
      for (auto& [id, l] : listeners_) {
        if (l->paused && std::chrono::steady_clock::now() >= l->pausedUntil) {
          l->paused = false;
          epoll_event ev{};
          ev.events = EPOLLIN;
          ev.data.u64 = Tag(kTagListener, id);
          (void)epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, l->fd.get(), &ev);
        }
      }
      for (int i = 0; i < n; ++i) {
        uint64_t tag = evs[i].data.u64;
        auto kind = tag >> 32;
        auto id = static_cast<uint32_t>(tag & 0xffffffffu);
        if (kind == kTagWake) {
          uint64_t count;
          while (read(wake_.get(), &count, sizeof(count)) > 0) {
          }
          RunCommands();
        } else if (kind == kTagListener) {
          auto it = listeners_.find(id);
          if (it != listeners_.end()) AcceptAll(*it->second);
        } else {
          auto it = conns_.find(id);
          if (it != conns_.end()) HandleConn(*it->second, evs[i].events);
        }
      }
      Flush();
    }
    std::vector<uint32_t> ids;
    for (auto& [id, c] : conns_) ids.push_back(id);
    for (uint32_t id : ids) CloseConnNow(id, 0, "the transport was closed");
    listeners_.clear();
    {
      std::lock_guard<std::mutex> lock(mu_);
      commands_.clear();
    }
    Flush();
  } catch (const std::exception& e) {
    // Only allocation failures can get here; the sockets close with the transport.
    NetEvent ev;
    ev.kind = NetEvent::kClosed;
    ev.text = std::string("network thread failed: ") + e.what();
    Emit(std::move(ev));
    Flush();
  }
}

// How long epoll may wait: until a paused listener resumes, or the next look for stalled frames.
int TcpTransport::WaitTimeout() {
  int timeout = -1;
  for (auto& [id, l] : listeners_) {
    if (l->paused) timeout = kAcceptPauseMs;
  }
  if (payloadTimeoutMs_ > 0 && !conns_.empty()) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    nextSweep_ - std::chrono::steady_clock::now())
                    .count();
    int wait = static_cast<int>(std::clamp<int64_t>(left, 0, static_cast<int64_t>(kSweepMaxMs)));
    timeout = timeout < 0 ? wait : std::min(timeout, wait);
  }
  return timeout;
}

// Closes authenticated connections that stopped part way through a frame: a payload (or its
// header or metadata) whose next byte has not come for payloadTimeoutMs holds its buffer, receive
// area or landing pieces, so it is closed with an ERROR and they are freed. Paused connections are
// not read, so they are not stalled; their clock restarts when they resume.
void TcpTransport::SweepStalled() {
  if (payloadTimeoutMs_ == 0) return;
  auto now = std::chrono::steady_clock::now();
  if (now < nextSweep_) return;
  uint64_t every = std::clamp<uint64_t>(payloadTimeoutMs_ / 4, kSweepMinMs, kSweepMaxMs);
  nextSweep_ = now + std::chrono::milliseconds(every);
  auto limit = std::chrono::milliseconds(payloadTimeoutMs_);
  std::vector<uint32_t> stalled;
  for (auto& [id, c] : conns_) {
    if (c->limited && !c->paused && c->reader.partial() && now - c->lastByte >= limit) {
      stalled.push_back(id);
    }
  }
  for (uint32_t id : stalled) {
    auto it = conns_.find(id);
    if (it == conns_.end()) continue;
    counters_.stalled.fetch_add(1, std::memory_order_relaxed);
    FailConn(*it->second, kErrorLimit, ETIMEDOUT,
             "no byte of a partly received frame for " + std::to_string(payloadTimeoutMs_) + " ms");
  }
}

// Tells the peer why, with an ERROR frame, where the socket still takes it without waiting, then
// closes. Bytes already queued go first (a frame cut in half would garble the ERROR); a peer that
// does not read gets the close alone. `why` is a copy: the caller's may live in the connection.
void TcpTransport::FailConn(Conn& c, uint32_t code, int err, std::string why) {
  uint32_t id = c.id;
  if (!c.connecting) {
    OutMsg m;
    m.head = ErrorFrame(code, why);
    m.total = m.head.size();
    c.outQueued += m.total;
    counters_.outQueued.fetch_add(m.total, std::memory_order_relaxed);
    c.out.push_back(std::move(m));
    if (!WriteConn(c)) return;  // closed by the failed send, with its own reason
    if (c.out.empty()) counters_.errorFrames.fetch_add(1, std::memory_order_relaxed);
  }
  CloseConnNow(id, err, why);
}

// Backpressure (Conn::held): whether the connection holds too much to be read on.
bool TcpTransport::Over(const Conn& c) const {
  return c.maxQueued != UINT64_MAX && c.held + c.outQueued > c.maxQueued;
}

// Resumes reading a paused connection once what it holds has drained to half. Returns false when
// the connection closed meanwhile.
bool TcpTransport::MaybeResume(Conn& c) {
  if (!c.paused || c.held + c.outQueued > c.maxQueued / 2) return true;
  c.paused = false;
  c.lastByte = std::chrono::steady_clock::now();
  // Bytes already staged would not wake epoll again, so read now.
  return ReadConn(c);
}

// An accepted connection's limits were raised: it has authenticated, and leaves the handshake
// budget for the connection budget, if there is room.
void TcpTransport::Authenticated(Conn& c) {
  if (!c.accepted || c.limited) {
    c.limited = true;
    return;
  }
  c.limited = true;
  handshaking_.erase(c.handshakeSeq);
  if (authenticated_ >= maxConnections_) {
    counters_.refused.fetch_add(1, std::memory_order_relaxed);
    c.accepted = false;  // counted in neither budget any more
    FailConn(c, kErrorLimit, EMFILE, "too many connections");
    return;
  }
  ++authenticated_;
}

void TcpTransport::RunCommands() {
  std::vector<std::unique_ptr<Command>> cmds;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cmds.swap(commands_);
  }
  for (auto& cmd : cmds) {
    switch (cmd->kind) {
      case Command::kAddListener: {
        auto l = std::make_unique<Listener>();
        l->id = cmd->id;
        l->fd = std::move(cmd->fd);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = Tag(kTagListener, l->id);
        if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, l->fd.get(), &ev) == 0) {
          listeners_[l->id] = std::move(l);
        }
        break;
      }
      case Command::kAddConn: {
        auto c = std::make_unique<Conn>();
        c->id = cmd->id;
        c->fd = std::move(cmd->fd);
        c->connecting = cmd->connecting;
        c->stage.resize(kStageBytes);
        c->interest = EPOLLIN | (c->connecting ? uint32_t{EPOLLOUT} : 0u);
        epoll_event ev{};
        ev.events = c->interest;
        ev.data.u64 = Tag(kTagConn, c->id);
        if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c->fd.get(), &ev) != 0) {
          NetEvent e;
          e.kind = NetEvent::kClosed;
          e.conn = c->id;
          e.err = errno;
          e.text = "cannot watch the socket";
          Emit(std::move(e));
          break;
        }
        uint32_t id = c->id;
        bool connecting = c->connecting;
        conns_[id] = std::move(c);
        if (!connecting) {
          NetEvent e;
          e.kind = NetEvent::kConnected;
          e.conn = id;
          Emit(std::move(e));
        }
        break;
      }
      case Command::kSend: {
        auto it = conns_.find(cmd->id);
        if (it == conns_.end()) break;  // already closed: its kClosed event releases the buffers
        Conn& c = *it->second;
        if (cmd->hasExpect) c.expects[cmd->expectId] = std::move(cmd->expect);
        uint64_t bytes = cmd->msg.total;
        c.out.push_back(std::move(cmd->msg));
        c.outQueued += bytes;
        counters_.outQueued.fetch_add(bytes, std::memory_order_relaxed);
        RaiseTo(counters_.maxOutQueued, c.outQueued);
        if (!c.connecting && c.out.size() == 1) {
          if (!WriteConn(c)) break;
        }
        if (!c.paused && Over(c)) {
          // Answers the peer does not read pile up here: stop reading its requests meanwhile.
          c.paused = true;
          counters_.pauses.fetch_add(1, std::memory_order_relaxed);
        } else if (!MaybeResume(c)) {
          break;  // written out at once, so reading resumes; it closed meanwhile
        }
        UpdateInterest(c);
        break;
      }
      case Command::kLimits: {
        auto it = conns_.find(cmd->id);
        if (it != conns_.end()) {
          Conn& c = *it->second;
          c.reader.SetLimits(cmd->maxMeta, cmd->maxPayload);
          c.maxQueued = cmd->maxQueued;
          c.answerType = cmd->answerType;
          c.answerUnit = cmd->answerUnit;
          c.lastByte = std::chrono::steady_clock::now();
          Authenticated(c);
        }
        break;
      }
      case Command::kRelease: {
        auto it = conns_.find(cmd->id);
        if (it == conns_.end()) break;
        Conn& c = *it->second;
        c.held -= std::min(c.held, cmd->maxPayload);
        if (!MaybeResume(c)) break;
        UpdateInterest(c);
        break;
      }
      case Command::kCloseConn:
        if (conns_.count(cmd->id) != 0) CloseConnNow(cmd->id, 0, cmd->why);
        break;
      case Command::kCloseListener: {
        auto it = listeners_.find(cmd->id);
        if (it != listeners_.end()) {
          (void)epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->fd.get(), nullptr);
          listeners_.erase(it);
        }
        break;
      }
    }
  }
}

void TcpTransport::AcceptAll(Listener& l) {
  for (int i = 0; i < 64; ++i) {
    sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    Fd fd(
        accept4(l.fd.get(), reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) {
        return;
      }
      NetEvent e;
      e.kind = NetEvent::kRefused;
      e.listener = l.id;
      e.err = errno;
      e.text = std::string("accept failed: ") + std::strerror(errno);
      Emit(std::move(e));
      // Out of descriptors (EMFILE, ENFILE) or memory: stop listening for a moment rather than
      // spin on a listener that stays readable.
      l.paused = true;
      l.pausedUntil = std::chrono::steady_clock::now() + std::chrono::milliseconds(kAcceptPauseMs);
      epoll_event ev{};
      ev.events = 0;
      ev.data.u64 = Tag(kTagListener, l.id);
      (void)epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, l.fd.get(), &ev);
      return;
    }
    std::string remote = AddressText(ss);
    if (authenticated_ >= maxConnections_) {
      // Told why where the fresh socket's buffer takes it (it always has room for this much).
      std::vector<uint8_t> error = ErrorFrame(kErrorLimit, "too many connections");
      if (send(fd.get(), error.data(), error.size(), MSG_NOSIGNAL | MSG_DONTWAIT) ==
          static_cast<ssize_t>(error.size())) {
        counters_.errorFrames.fetch_add(1, std::memory_order_relaxed);
      }
      counters_.refused.fetch_add(1, std::memory_order_relaxed);
      NetEvent e;
      e.kind = NetEvent::kRefused;
      e.listener = l.id;
      e.text = remote;
      Emit(std::move(e));
      continue;  // fd closes here: the excess connection is refused
    }
    if (handshaking_.size() >= maxHandshakes_) {
      // The handshake budget is full: the oldest connection still in its handshake makes room.
      // Idle sockets are thereby let go as soon as newer ones come, instead of locking out a
      // client with the token until the handshake timeout.
      auto oldest = conns_.find(handshaking_.begin()->second);
      handshaking_.erase(handshaking_.begin());
      if (oldest != conns_.end()) {
        counters_.handshakesEvicted.fetch_add(1, std::memory_order_relaxed);
        oldest->second->accepted = false;  // already out of the budget
        FailConn(*oldest->second, kErrorLimit, EMFILE,
                 "too many connections in their handshake; the oldest is closed");
      }
    }
    NoDelay(fd.get());
    auto c = std::make_unique<Conn>();
    c->id = nextId_.fetch_add(1);
    c->fd = std::move(fd);
    c->accepted = true;
    c->stage.resize(kStageBytes);
    c->interest = EPOLLIN;
    epoll_event ev{};
    ev.events = c->interest;
    ev.data.u64 = Tag(kTagConn, c->id);
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c->fd.get(), &ev) != 0) continue;
    c->handshakeSeq = ++acceptSeq_;
    c->lastByte = std::chrono::steady_clock::now();
    handshaking_[c->handshakeSeq] = c->id;
    NetEvent e;
    e.kind = NetEvent::kAccepted;
    e.conn = c->id;
    e.listener = l.id;
    e.text = remote;
    Emit(std::move(e));
    conns_[c->id] = std::move(c);
  }
}

void TcpTransport::CloseConnNow(uint32_t id, int err, const std::string& why) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  (void)epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c.fd.get(), nullptr);
  if (c.accepted && c.limited) {
    --authenticated_;
  } else if (c.accepted) {
    handshaking_.erase(c.handshakeSeq);
  }
  counters_.outQueued.fetch_sub(std::min(c.outQueued, counters_.outQueued.load()),
                                std::memory_order_relaxed);
  if (it->second->inArea) {
    // A payload cut short: its area was never handed to JavaScript, so it is free again.
    ReturnArea(it->second->area);
    it->second->inArea = false;
    it->second->payload = nullptr;
  }
  // Landing pieces of a payload cut short were never named to JavaScript either.
  if (!it->second->landed.empty()) ReturnLanding(&it->second->landed);
  // The socket, the queued sends and the expectations go first: once JavaScript hears of the
  // close, no byte of its memory is read or written any more.
  conns_.erase(it);
  NetEvent e;
  e.kind = NetEvent::kClosed;
  e.conn = id;
  e.err = err;
  e.text = why;
  Emit(std::move(e));
}

void TcpTransport::UpdateInterest(Conn& c) {
  uint32_t want = (c.paused ? 0u : uint32_t{EPOLLIN}) |
                  ((c.connecting || !c.out.empty()) ? uint32_t{EPOLLOUT} : 0u);
  if (want == c.interest) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = Tag(kTagConn, c.id);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev) == 0) c.interest = want;
}

void TcpTransport::HandleConn(Conn& c, uint32_t events) {
  uint32_t id = c.id;
  if (c.connecting && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) != 0) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) {
      CloseConnNow(id, err, std::string("cannot connect: ") + std::strerror(err));
      return;
    }
    c.connecting = false;
    NetEvent e;
    e.kind = NetEvent::kConnected;
    e.conn = id;
    Emit(std::move(e));
  }
  if (c.paused && (events & (EPOLLHUP | EPOLLERR)) != 0) {
    // Epoll reports a hangup whatever the interest, again and again while it is not handled;
    // a paused connection is not read, so it is closed here. Its peer can no longer take
    // answers anyway.
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    CloseConnNow(id, err,
                 err != 0 ? std::string("connection failed: ") + std::strerror(err)
                          : std::string("the peer closed the connection"));
    return;
  }
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0 && !c.paused) {
    if (!ReadConn(c)) return;  // closed
  }
  if (!c.out.empty() && !c.connecting) {
    if (!WriteConn(c)) return;
    if (!MaybeResume(c)) return;
  }
  UpdateInterest(c);
}

bool TcpTransport::WriteConn(Conn& c) {
  while (!c.out.empty()) {
    iovec iov[kMaxIov];
    int n = 0;
    for (const OutMsg& m : c.out) {
      uint64_t skip = m.done;
      if (skip < m.head.size()) {
        iov[n].iov_base = const_cast<uint8_t*>(m.head.data() + skip);
        iov[n].iov_len = m.head.size() - skip;
        ++n;
        skip = 0;
      } else {
        skip -= m.head.size();
      }
      for (const Span& s : m.spans) {
        if (n == kMaxIov) break;
        if (skip >= s.len) {
          skip -= s.len;
          continue;
        }
        iov[n].iov_base = s.data + skip;
        iov[n].iov_len = s.len - skip;
        skip = 0;
        ++n;
      }
      if (n == kMaxIov) break;
    }
    msghdr mh{};
    mh.msg_iov = iov;
    mh.msg_iovlen = static_cast<size_t>(n);
    ssize_t w = sendmsg(c.fd.get(), &mh, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      if (errno == EINTR) continue;
      int err = errno;
      CloseConnNow(c.id, err, std::string("send failed: ") + std::strerror(err));
      return false;
    }
    auto left = static_cast<uint64_t>(w);
    c.outQueued -= std::min(c.outQueued, left);
    counters_.outQueued.fetch_sub(left, std::memory_order_relaxed);
    while (left > 0) {
      OutMsg& m = c.out.front();
      uint64_t take = std::min(left, m.total - m.done);
      m.done += take;
      left -= take;
      if (m.done < m.total) break;
      if (m.notify) {
        NetEvent e;
        e.kind = NetEvent::kSent;
        e.conn = c.id;
        e.token = m.token;
        Emit(std::move(e));
      }
      c.out.pop_front();
    }
  }
  return true;
}

bool TcpTransport::ReadConn(Conn& c) {
  size_t budget = kReadBudget;
  // Staged bytes are always consumed, budget or not: the socket may hold nothing more, and then
  // epoll would never report this connection again while a frame sits in the stage.
  while (budget > 0 || c.stageHead < c.stageTail) {
    if (c.paused) return true;  // the release or write that resumes it reads on
    if (c.stageHead < c.stageTail) {
      size_t used = 0;
      if (!Consume(c, c.stage.data() + c.stageHead, c.stageTail - c.stageHead, &used)) {
        return false;
      }
      c.stageHead += used;
      continue;
    }
    ssize_t r = 0;
    if (c.reader.inPayload() && c.reader.payloadOwed() >= kDirectReadMin) {
      // Straight into the destination: no staging copy for the bulk of a block.
      iovec iov[kMaxIov];
      int n = c.reader.DirectIov(iov, kMaxIov);
      r = readv(c.fd.get(), iov, n);
      if (r > 0) {
        c.lastByte = std::chrono::steady_clock::now();
        size_t used = 0;
        if (!Consume(c, nullptr, static_cast<size_t>(r), &used)) return false;
        budget -= std::min(budget, static_cast<size_t>(r));
        continue;
      }
    } else {
      r = recv(c.fd.get(), c.stage.data(), c.stage.size(), 0);
      if (r > 0) {
        c.lastByte = std::chrono::steady_clock::now();
        c.stageHead = 0;
        c.stageTail = static_cast<size_t>(r);
        budget -= std::min(budget, static_cast<size_t>(r));
        continue;
      }
    }
    if (r == 0) {
      CloseConnNow(c.id, 0,
                   c.reader.partial() ? "the peer closed the connection in the middle of a frame"
                                      : "the peer closed the connection");
      return false;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      WaitFor(c);
      return true;
    }
    if (errno == EINTR) continue;
    int err = errno;
    CloseConnNow(c.id, err, std::string("receive failed: ") + std::strerror(err));
    return false;
  }
  // Out of budget, with bytes possibly still queued: the mark must fit what the frame now owes,
  // or a small next frame would never be reported readable.
  WaitFor(c);
  return true;
}

// Called whenever the thread stops reading a connection (nothing queued, or its budget spent):
// sets the receive low-water mark for what the current frame still owes. While a large payload is
// owed, the socket reports readable only once a good part of it has arrived (SO_RCVLOWAT), so a
// block lands in a few large reads and wakeups rather than one per segment. The mark is never more
// than the frame owes (those bytes are bound to come, or the peer closes, which wakes the reader
// whatever the mark), and is 1 otherwise, so a small frame is always seen.
void TcpTransport::WaitFor(Conn& c) {
  int want = 1;
  if (c.reader.inPayload()) {
    uint64_t left = c.reader.payloadOwed();
    if (left >= kLowatMin) want = static_cast<int>(std::min<uint64_t>(left, kLowatMax));
  }
  if (want == c.lowat) return;
  // Best effort: without it the reads are smaller, not wrong.
  if (setsockopt(c.fd.get(), SOL_SOCKET, SO_RCVLOWAT, &want, sizeof(want)) == 0) c.lowat = want;
}

// Takes n bytes of the current frame: from src (staged bytes), or, with src null, bytes a direct
// read already put in place. Returns false when the frame broke a rule and the connection closed.
bool TcpTransport::Consume(Conn& c, const uint8_t* src, size_t n, size_t* used) {
  switch (c.reader.Consume(src, n, used)) {
    case FrameReader::Step::kMore:
      return true;
    case FrameReader::Step::kMetaDone:
      return StartPayload(c);
    case FrameReader::Step::kFrameDone:
      return FrameReady(c);
    case FrameReader::Step::kFault:
      break;
  }
  const FrameReader::Fault& f = c.reader.fault();
  FailConn(c, f.code, f.err, f.why);
  return false;
}

// Metadata complete: decides where the payload goes (an expected destination or a fresh buffer).
bool TcpTransport::StartPayload(Conn& c) {
  const FrameReader::Header& h = c.reader.header();
  std::vector<ByteSpan> place;
  auto it = c.expects.find(h.requestId);
  if (it != c.expects.end()) {
    Expect expect = std::move(it->second);
    c.expects.erase(it);  // any answer ends the expectation; an error answer carries no blocks
    if (expect.type == h.type && h.payloadLen > 0) {
      std::vector<ByteSpan> spans;
      spans.reserve(expect.spans.size());
      for (const Span& s : expect.spans) spans.push_back({s.data, s.len});
      std::string why;
      if (!MatchPlacement(c.reader.meta(), spans, h.payloadLen, &place, &why)) {
        FailConn(c, kErrorProtocol, EPROTO, why);
        return false;
      }
    }
  }
  if (h.payloadLen == 0) return FrameReady(c);
  if (place.empty() && TakeLanding(h.type, h.payloadLen, &c.landed)) {
    for (const Area& a : c.landed) place.push_back({a.data, a.len});
  }
  c.placed = !place.empty();
  if (c.placed) {
    c.reader.SetSpans(std::move(place));
  } else if (TakeArea(h.payloadLen, &c.area)) {
    c.inArea = true;
    c.payload = c.area.data;
    c.reader.SetBuffer(c.payload);
  } else {
    c.payload = static_cast<uint8_t*>(std::malloc(h.payloadLen));
    if (c.payload == nullptr) {
      CloseConnNow(c.id, ENOMEM, "cannot allocate " + std::to_string(h.payloadLen) + " bytes");
      return false;
    }
    c.reader.SetBuffer(c.payload);
  }
  return true;
}

bool TcpTransport::FrameReady(Conn& c) {
  const FrameReader::Header& h = c.reader.header();
  NetEvent e;
  e.kind = NetEvent::kFrame;
  e.conn = c.id;
  e.type = h.type;
  e.flags = h.flags;
  e.requestId = h.requestId;
  e.payloadBytes = h.payloadLen;
  if (c.maxQueued != UINT64_MAX) {
    // What this frame holds until JavaScript releases it: counted now, before the next frame is
    // read, so no burst of small requests can commit more than the limit and one frame.
    uint64_t answer =
        h.type == c.answerType && c.answerUnit > 0 ? AnswerBytes(c.reader.meta(), c.answerUnit) : 0;
    e.held = h.payloadLen + c.reader.meta().size();
    e.held = answer > UINT64_MAX - e.held ? UINT64_MAX : e.held + answer;
    c.held = e.held > UINT64_MAX - c.held ? UINT64_MAX : c.held + e.held;
    RaiseTo(counters_.maxHeld, c.held);
    if (!c.paused && Over(c)) {
      c.paused = true;  // ReadConn stops before the next frame
      counters_.pauses.fetch_add(1, std::memory_order_relaxed);
    }
  }
  e.meta = std::move(c.reader.meta());
  if (c.inArea) {
    e.area = c.area.token;
    c.inArea = false;
  } else {
    e.payload.reset(c.payload);
  }
  e.placed = c.placed;
  if (e.placed) e.checksums = std::move(c.reader.checksums());
  for (const Area& a : c.landed) e.landed.push_back(a.token);
  c.landed.clear();
  c.payload = nullptr;
  c.placed = false;
  c.reader.Next();
  Emit(std::move(e));
  return true;
}

}  // namespace kvtier
