// The TCP transport's per-socket state and tuning, shared by the files of its epoll thread
// (tcp_transport.cc, tcp_accept.cc, tcp_receive.cc); nothing outside the transport includes it.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <unordered_map>
#include <vector>

#include "frame_reader.h"
#include "tcp_transport.h"

namespace kvtier {

// Reads below this many bytes go through the staging buffer (fewer system calls for small frames);
// larger payload remainders are read straight into their destination.
inline constexpr size_t kStageBytes = 64 * 1024;
inline constexpr size_t kDirectReadMin = 16 * 1024;
// One connection yields the thread after this many bytes, so a fast sender cannot starve others.
inline constexpr size_t kReadBudget = 8 * 1024 * 1024;
// Low-water mark while a payload is incomplete (WaitFor): payloads still owing less than kLowatMin
// wait as usual; larger ones wake the thread once min(what is owed, kLowatMax) bytes are queued.
inline constexpr uint64_t kLowatMin = 64 * 1024;
inline constexpr uint64_t kLowatMax = 256 * 1024;
inline constexpr int kMaxIov = 64;
// Epoll user data: the kind of object in the top half, its id in the bottom half.
inline constexpr uint64_t kTagWake = 0;
inline constexpr uint64_t kTagListener = 1;
inline constexpr uint64_t kTagConn = 2;
// Pause after accept() ran out of descriptors, so a level-triggered listener does not spin.
inline constexpr int kAcceptPauseMs = 100;
// Stalled frames (payloadTimeoutMs) are looked for this often at most, and at least four times
// per timeout.
inline constexpr uint64_t kSweepMaxMs = 1000;
inline constexpr uint64_t kSweepMinMs = 5;

inline uint64_t Tag(uint64_t kind, uint32_t id) { return (kind << 32) | id; }

inline void RaiseTo(std::atomic<uint64_t>& high, uint64_t v) {
  if (v > high.load(std::memory_order_relaxed)) high.store(v, std::memory_order_relaxed);
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
  Area area;
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
};

}  // namespace kvtier
