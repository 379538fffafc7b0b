// The N-API surface of the TCP transport: every argument is checked here, on the main thread,
// then handed to the epoll thread as a Command (tcp_transport.cc).
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <exception>
#include <utility>

#include "../common/args.h"
#include "../common/errors.h"
#include "../common/targets.h"
#include "tcp_conn.h"

namespace kvtier {

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
  // JavaScript refs it while it listens or waits for answers.
  life_.Begin(env, Tsfn::New(env, info[1].As<Napi::Function>(), "kvtier-net", 0, 1, this),
              [this] { StopThread(); });
  try {
    thread_ = std::thread([this] { Run(); });
  } catch (const std::exception& e) {
    life_.Shutdown();
    Throw(env, kIo, std::string("cannot start the network thread: ") + e.what());
  }
}

TcpTransport::~TcpTransport() { life_.Shutdown(); }

void TcpTransport::CheckOpen(Napi::Env env) const {
  if (life_.closed()) Throw(env, kClosed, "transport is closed");
}

void TcpTransport::Deliver(Napi::Env env, Napi::Function fn, TcpTransport*, NetEvents* raw) {
  std::unique_ptr<NetEvents> events(raw);
  if (env == nullptr) return;  // aborted at teardown: the events are freed unseen
  fn.Call({EventsToJs(env, *events)});
}

// listen(host, port, backlog) -> { id, port }
Napi::Value TcpTransport::Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
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
  uint16_t boundPort = PortOf(bound);
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
  CheckOpen(env);
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

// The memory of send and receive targets: host regions and JavaScript buffers, resolved as every
// engine resolves them (common/targets.h): each target classified first, while user JavaScript
// may still run (Proxy traps in instanceof), and only then its pointer taken. The caller keeps the
// objects (and a region's in-flight count) until the matching kSent or kClosed event.
std::vector<Target> Targets(Napi::Env env, const std::vector<Napi::Value>& values) {
  std::vector<TargetRef> refs;
  refs.reserve(values.size());
  for (size_t i = 0; i < values.size(); ++i) refs.push_back(ClassifyTarget(env, values[i], i));
  std::vector<Target> mems;
  mems.reserve(refs.size());
  for (size_t i = 0; i < refs.size(); ++i) {
    mems.push_back(TargetMemory(env, refs[i], i));
    if (mems.back().device) {
      // Sockets read and write host memory; a device address would be a wild access.
      Throw(env, kBadArgument, "target " + std::to_string(i) + " is GPU memory");
    }
  }
  return mems;
}

// (target index, offset, length) triples into spans, every one checked against its target.
std::vector<TcpTransport::Span> Spans(Napi::Env env, const std::vector<Target>& mems, Napi::Value v,
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
    const Target& m = mems[static_cast<size_t>(t)];
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
  CheckOpen(env);
  uint64_t conn = ByteCountArg(env, info[0], "connection");
  if (!info[1].IsTypedArray()) Throw(env, kBadArgument, "head must be a Uint8Array");
  if (!info[2].IsArray()) Throw(env, kBadArgument, "targets must be an array");
  Napi::Array list = info[2].As<Napi::Array>();
  std::vector<Napi::Value> values;
  for (uint32_t i = 0; i < list.Length(); ++i) values.push_back(list.Get(i));
  // Pointers only after every getter has run, so no script can detach a buffer in between.
  std::vector<Target> mems = Targets(env, values);
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
      const Target& m = mems[static_cast<size_t>(a[i])];
      cmd->expect.spans.push_back(
          {m.data + static_cast<uint64_t>(a[i + 1]), static_cast<uint64_t>(a[i + 2])});
    }
  }
  Post(std::move(cmd));
  return env.Undefined();
}

// (target, offset, length, token) of provide() and land(): memory inside its target, named by a

namespace {

// (target, offset, length, token) of provide() and land(): memory inside its target, named by a
// 32-bit token. The caller keeps the target open while the transport holds it.
Area AreaArgs(Napi::Env env, const Napi::CallbackInfo& info, const char* what) {
  Target m = Targets(env, {info[0]})[0];
  uint64_t off = ByteCountArg(env, info[1], "offset");
  uint64_t len = ByteCountArg(env, info[2], "length");
  uint64_t token = ByteCountArg(env, info[3], "token");
  if (off > m.size || len > m.size - off || len == 0 || token > 0xffffffffu) {
    Throw(env, kBadArgument, std::string(what) + " must lie inside its region");
  }
  return {m.data + off, len, static_cast<uint32_t>(token)};
}

}  // namespace

// provide(region, offset, length, token): memory the transport may receive one payload into (the
// first area large enough, else a fresh allocation). A frame received there names the token; the
// area is the caller's again until it provides it anew.
Napi::Value TcpTransport::Provide(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  Area a = AreaArgs(env, info, "a receive area");
  areas_.Provide(a);
  return env.Undefined();
}

// land(target, offset, length, token, type): a landing piece. Every piece has the same length (the
// store's block size) and serves frames of one type: a payload of k such lengths in a frame of
// that type, with k pieces free, is read one block per piece, and its frame names the pieces'
// tokens in order. Each is the caller's again from then, until it lands it anew; unland() takes
// back the pieces no payload holds.
Napi::Value TcpTransport::Land(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  Area a = AreaArgs(env, info, "a landing piece");
  uint64_t type = ByteCountArg(env, info[4], "type");
  if (type == 0 || type > 0xff) Throw(env, kBadArgument, "type must be a frame type, 1 to 255");
  if (!areas_.Land(a, static_cast<uint8_t>(type))) {
    Throw(env, kBadArgument, "every landing piece must have the same length and frame type");
  }
  return env.Undefined();
}

// unland(): the tokens of the landing pieces no payload holds, which are the caller's again.
Napi::Value TcpTransport::Unland(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<Area> taken = areas_.Unland();
  Napi::Array out = Napi::Array::New(env, taken.size());
  for (size_t i = 0; i < taken.size(); ++i) out[i] = Napi::Number::New(env, taken[i].token);
  return out;
}

// setLimits(conn, maxMeta, maxPayload): raised after the handshake authenticates the peer.
Napi::Value TcpTransport::SetLimits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
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
  if (life_.closed()) return env.Undefined();
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
  if (life_.closed()) return env.Undefined();
  auto cmd = std::make_unique<Command>();
  cmd->kind = Command::kCloseConn;
  cmd->id = static_cast<uint32_t>(ByteCountArg(env, info[0], "connection"));
  cmd->why = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "closed locally";
  Post(std::move(cmd));
  return env.Undefined();
}

Napi::Value TcpTransport::CloseListener(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (life_.closed()) return env.Undefined();
  auto cmd = std::make_unique<Command>();
  cmd->kind = Command::kCloseListener;
  cmd->id = static_cast<uint32_t>(ByteCountArg(env, info[0], "listener"));
  Post(std::move(cmd));
  return env.Undefined();
}

Napi::Value TcpTransport::RefJs(const Napi::CallbackInfo& info) {
  if (!life_.closed()) life_.Busy(info.Env());
  return info.Env().Undefined();
}

Napi::Value TcpTransport::UnrefJs(const Napi::CallbackInfo& info) {
  if (!life_.closed()) life_.Idle(info.Env());
  return info.Env().Undefined();
}

// close(): closes every socket; kClosed events for the connections still arrive.
Napi::Value TcpTransport::Close(const Napi::CallbackInfo& info) {
  life_.Shutdown();
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
  o.Set("landingTaken", Napi::Number::New(env, static_cast<double>(areas_.landingTaken())));
  o.Set("landingReturned", Napi::Number::New(env, static_cast<double>(areas_.landingReturned())));
  return o;
}

}  // namespace kvtier
