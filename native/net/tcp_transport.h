// Native TCP transport: one epoll thread owns every socket of a transport. It moves frames
// (a fixed header, a metadata section and a bulk payload, docs/protocol.md) between sockets and
// memory, and knows nothing of what the frames mean (lib/peer/ decides that) beyond the
// frame-layout hook of batch_layout.h. Completed frames, connection changes and send completions
// reach JavaScript in batches through one thread-safe function (net_events.h), so the event loop
// never waits on a socket.
//
// The class is spread over files by job:
//   tcp_api.cc        the N-API surface: arguments checked, commands posted to the thread
//   tcp_transport.cc  the epoll loop, the commands, the write path and closing
//   tcp_accept.cc     accepting, the connection and handshake budgets, stalled frames
//   tcp_receive.cc    the read path: bytes into the frame reader, payloads to their places
// with receive areas and landing pieces in receive_areas.h and the parser in frame_reader.h.
#pragma once
#include <napi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "../common/threaded_object.h"
#include "net_events.h"
#include "receive_areas.h"
#include "socket.h"

namespace kvtier {

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
  // Where the payload of the answer to one request goes (batch_layout.h, MatchPlacement).
  struct Expect {
    uint8_t type;
    std::vector<Span> spans;
  };
  struct Conn;
  struct Listener;
  // What the main thread asks of the epoll thread.
  struct Command {
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

 private:
  static void Deliver(Napi::Env env, Napi::Function fn, TcpTransport* self, NetEvents* events);
  using Tsfn = Napi::TypedThreadSafeFunction<TcpTransport, NetEvents, &TcpTransport::Deliver>;

  // tcp_api.cc
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
  void CheckOpen(Napi::Env env) const;

  // tcp_transport.cc
  void Post(std::unique_ptr<Command> cmd);
  void Wake();
  void StopThread();
  void Run();
  void RunCommands();
  void Apply(Command& cmd);
  void AddConn(Command& cmd);
  void QueueSend(Command& cmd);
  void HandleConn(Conn& c, uint32_t events);
  bool WriteConn(Conn& c);
  bool Over(const Conn& c) const;
  bool MaybeResume(Conn& c);
  void FailConn(Conn& c, uint32_t code, int err, std::string why);
  void CloseConnNow(uint32_t id, int err, const std::string& why);
  void UpdateInterest(Conn& c);
  int WaitTimeout();
  void Emit(NetEvent&& e) { events_.Push(std::move(e)); }
  void Flush();

  // tcp_accept.cc
  void AcceptAll(Listener& l);
  void PauseListener(Listener& l);
  void ResumeListeners();
  void Authenticated(Conn& c);
  void SweepStalled();

  // tcp_receive.cc
  bool ReadConn(Conn& c);
  void WaitFor(Conn& c);
  bool Consume(Conn& c, const uint8_t* src, size_t n, size_t* used);
  bool StartPayload(Conn& c);
  bool FrameReady(Conn& c);

  Fd epoll_;
  Fd wake_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  uint32_t maxConnections_ = 256;    // authenticated connections (their limits raised)
  uint32_t maxHandshakes_ = 64;      // accepted connections not yet authenticated
  uint64_t payloadTimeoutMs_ = 0;    // a partly received frame idle this long closes (0: never)
  std::atomic<uint32_t> nextId_{1};  // ids for connections and listeners, from both threads

  ReceiveAreas areas_;  // filled by the main thread, taken by the epoll thread
  EventBatch events_;   // events not yet handed to the thread-safe function

  std::mutex mu_;  // guards commands_
  std::vector<std::unique_ptr<Command>> commands_;

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
    std::atomic<uint64_t> refused{0};      // connections refused: too many authenticated
    std::atomic<uint64_t> stalled{0};      // closed for a partly received frame left idle
    std::atomic<uint64_t> errorFrames{0};  // ERROR frames the transport sent before a close
  } counters_;

  ThreadedObject<Tsfn> life_;  // its busy count: ref() calls not yet undone by unref()
};

}  // namespace kvtier
