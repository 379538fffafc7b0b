// Native TCP transport: one epoll thread owns every socket of a transport. It moves frames
// (a fixed header, a metadata section and a bulk payload, docs/protocol.md) between sockets and
// memory, and knows nothing of what the frames mean: lib/peer/ decides that. Completed frames,
// connection changes and send completions reach JavaScript in batches through one thread-safe
// function, so the event loop never waits on a socket.
#pragma once
#include <napi.h>
#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "frame_reader.h"

namespace kvtier {

// RAII for a file descriptor: every socket, the epoll instance and the wakeup eventfd.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset();

 private:
  int fd_ = -1;
};

// One event for JavaScript, built on the epoll thread and turned into an object on the main one.
struct NetEvent {
  enum Kind : uint8_t {
    kAccepted = 1,
    kConnected = 2,
    kFrame = 3,
    kSent = 4,
    kClosed = 5,
    kRefused = 6
  };
  Kind kind = kClosed;
  uint32_t conn = 0;
  uint32_t listener = 0;  // kAccepted
  uint8_t type = 0;       // kFrame
  uint8_t flags = 0;
  uint32_t requestId = 0;
  std::vector<uint8_t> meta;
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> payload;  // handed to JavaScript as an external Buffer
  uint64_t payloadBytes = 0;
  bool placed = false;  // the payload went straight into an expected destination or landing pieces
  int64_t area = -1;    // or into this receive area (its token), handed back by provide()
  // Placed payloads: the CRC-32C of each destination filled, in order, computed while its bytes
  // are still in cache, so the receiver need not read them again to check or store them.
  std::vector<uint32_t> checksums;
  std::vector<uint32_t> landed;  // or into these landing pieces (their tokens), one per piece
  uint64_t held = 0;   // bytes counted against the connection's backpressure until release()
  uint32_t token = 0;  // kSent
  int err = 0;         // kClosed: errno, or 0 for an orderly close
  std::string text;    // kClosed: why; kAccepted: the remote address
};

class TcpTransport : public Napi::ObjectWrap<TcpTransport> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit TcpTransport(const Napi::CallbackInfo& info);
  ~TcpTransport() override;

  struct Span {
    uint8_t* data;
    uint64_t len;
  };
  struct OutMsg {
    std::vector<uint8_t> head;  // frame header and metadata, owned
    std::vector<Span> spans;    // payload, borrowed: JavaScript holds it until kSent or kClosed
    uint64_t total = 0;
    uint64_t done = 0;
    uint32_t token = 0;
    bool notify = false;
  };
  struct Expect {
    uint8_t type;
    std::vector<Span> spans;
  };
  struct Conn;
  struct Listener;

 private:
  struct Command;
  static void Deliver(Napi::Env env, Napi::Function fn, TcpTransport* self,
                      std::vector<NetEvent>* events);
  static void CleanupHook(void* arg);
  using Tsfn =
      Napi::TypedThreadSafeFunction<TcpTransport, std::vector<NetEvent>, &TcpTransport::Deliver>;

  Napi::Value Listen(const Napi::CallbackInfo& info);
  Napi::Value Connect(const Napi::CallbackInfo& info);
  Napi::Value Send(const Napi::CallbackInfo& info);
  Napi::Value SetLimits(const Napi::CallbackInfo& info);
  Napi::Value Provide(const Napi::CallbackInfo& info);
  Napi::Value Land(const Napi::CallbackInfo& info);
  Napi::Value Unland(const Napi::CallbackInfo& info);
  Napi::Value Release(const Napi::CallbackInfo& info);
  Napi::Value CloseConn(const Napi::CallbackInfo& info);
  Napi::Value CloseListener(const Napi::CallbackInfo& info);
  Napi::Value RefJs(const Napi::CallbackInfo& info);
  Napi::Value UnrefJs(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);

  void Post(std::unique_ptr<Command> cmd);
  void Run();
  void RunCommands();
  void HandleConn(Conn& c, uint32_t events);
  bool ReadConn(Conn& c);
  void WaitFor(Conn& c);
  bool Consume(Conn& c, const uint8_t* src, size_t n, size_t* used);
  bool StartPayload(Conn& c);
  void AcceptAll(Listener& l);
  bool WriteConn(Conn& c);
  bool FrameReady(Conn& c);
  bool Over(const Conn& c) const;
  bool MaybeResume(Conn& c);
  void Authenticated(Conn& c);
  void FailConn(Conn& c, uint32_t code, int err, std::string why);
  void SweepStalled();
  int WaitTimeout();
  void CloseConnNow(uint32_t id, int err, const std::string& why);
  void UpdateInterest(Conn& c);
  void Emit(NetEvent&& e);
  void Flush();
  void Shutdown();

  Fd epoll_;
  Fd wake_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  Tsfn tsfn_;
  bool closed_ = false;
  bool cleanupHooked_ = false;
  int refs_ = 0;
  napi_env env_ = nullptr;
  uint32_t maxConnections_ = 256;    // authenticated connections (their limits raised)
  uint32_t maxHandshakes_ = 64;      // accepted connections not yet authenticated
  uint64_t payloadTimeoutMs_ = 0;    // a partly received frame idle this long closes (0: never)
  std::atomic<uint32_t> nextId_{1};  // ids for connections and listeners, from both threads

  struct Area {
    uint8_t* data;
    uint64_t len;
    uint32_t token;
  };
  static Area AreaArgs(Napi::Env env, const Napi::CallbackInfo& info, const char* what);
  bool TakeArea(uint64_t len, Area* out);
  void ReturnArea(const Area& a);
  bool TakeLanding(uint8_t type, uint64_t len, std::vector<Area>* out);
  void ReturnLanding(std::vector<Area>* pieces);
  std::mutex areasMu_;  // guards areas_ and landing_: filled by the main thread, taken by epoll's
  std::vector<Area> areas_;
  // Landing pieces: equal-sized pieces of the receiver's store (a server's free host-tier slots).
  // A payload that is a whole number of pieces lands one piece each, so it needs no copy after.
  std::vector<Area> landing_;
  uint64_t landingLen_ = 0;
  uint8_t landingType_ = 0;  // the frame type whose payloads land (a server's PUT)

  std::mutex mu_;  // guards commands_ and pending_
  std::vector<std::unique_ptr<Command>> commands_;
  std::vector<NetEvent>* pending_ = nullptr;  // events not yet handed to the thread-safe function

  // Epoll thread only.
  std::unordered_map<uint32_t, std::unique_ptr<Conn>> conns_;
  std::unordered_map<uint32_t, std::unique_ptr<Listener>> listeners_;
  uint32_t authenticated_ = 0;  // accepted connections whose limits were raised, still open
  // Accepted connections not yet authenticated, oldest first (by accept order): when their
  // budget is full the oldest makes room, so idle sockets cannot lock a client with the token out.
  std::map<uint64_t, uint32_t> handshaking_;
  uint64_t acceptSeq_ = 0;
  std::chrono::steady_clock::time_point nextSweep_{};

  // Counters for stats(), written by the epoll thread only.
  struct Counters {
    std::atomic<uint64_t> pauses{0};        // times a connection stopped being read
    std::atomic<uint64_t> maxHeld{0};       // most bytes one connection had held by JavaScript
    std::atomic<uint64_t> maxOutQueued{0};  // most bytes one connection had queued to write
    std::atomic<uint64_t> outQueued{0};     // bytes queued to write now, all connections
    std::atomic<uint64_t> handshakesEvicted{0};
    std::atomic<uint64_t> refused{0};          // connections refused: too many authenticated
    std::atomic<uint64_t> stalled{0};          // closed for a partly received frame left idle
    std::atomic<uint64_t> errorFrames{0};      // ERROR frames the transport sent before a close
    std::atomic<uint64_t> landingTaken{0};     // landing pieces payloads were read into
    std::atomic<uint64_t> landingReturned{0};  // of those, pieces of payloads cut short
  } counters_;
};

}  // namespace kvtier
