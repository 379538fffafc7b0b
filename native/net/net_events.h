// Events of the TCP transport on their way to JavaScript: built on the epoll thread, gathered
// into one batch per turn of its loop, and turned into plain objects on the main thread (the
// NetEvent type of lib/core/native.ts).
#pragma once
#include <napi.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace kvtier {

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

using NetEvents = std::vector<NetEvent>;

// Events waiting for the thread-safe function; filled by the epoll thread, taken as one batch.
class EventBatch {
 public:
  void Push(NetEvent&& e);
  // Everything pushed since the last Take, or nullptr when nothing was.
  std::unique_ptr<NetEvents> Take();

 private:
  std::mutex mu_;
  std::unique_ptr<NetEvents> pending_;
};

// The batch as JavaScript objects (main thread). Frame payloads become external Buffers that own
// their memory from here on.
Napi::Array EventsToJs(Napi::Env env, NetEvents& events);

}  // namespace kvtier
