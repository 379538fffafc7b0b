// Where the TCP transport may put payloads without allocating: receive areas and landing pieces,
// both memory of the receiver's that JavaScript lends by token (provide() and land()). Filled on
// the main thread, taken on the epoll thread, hence the lock.
#pragma once
#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

namespace kvtier {

struct Area {
  uint8_t* data = nullptr;
  uint64_t len = 0;
  uint32_t token = 0;
};

class ReceiveAreas {
 public:
  // A receive area: one payload of at most its length may be read into it. The frame names its
  // token; the area is the caller's again until it provides it anew.
  void Provide(const Area& a);
  // The first area large enough for len bytes.
  bool Take(uint64_t len, Area* out);
  // An area whose payload was cut short, never named to JavaScript.
  void Return(const Area& a);

  // A landing piece: equal-sized pieces of the receiver's store (a server's free host-tier slots)
  // serving frames of one type. A payload that is a whole number of pieces lands one piece each,
  // so it needs no copy after. False when the piece's length or type differs from those given.
  bool Land(const Area& a, uint8_t type);
  // The pieces no payload holds, which are the caller's again.
  std::vector<Area> Unland();
  // Pieces for a payload of len bytes in a frame of `type`: all it needs, or none.
  bool TakeLanding(uint8_t type, uint64_t len, std::vector<Area>* out);
  // Pieces of a payload cut short, never named to JavaScript.
  void ReturnLanding(std::vector<Area>* pieces);

  uint64_t landingTaken() const { return taken_.load(std::memory_order_relaxed); }
  uint64_t landingReturned() const { return returned_.load(std::memory_order_relaxed); }

 private:
  std::mutex mu_;
  std::vector<Area> areas_;
  std::vector<Area> landing_;
  uint64_t landingLen_ = 0;
  uint8_t landingType_ = 0;            // the frame type whose payloads land (a server's PUT)
  std::atomic<uint64_t> taken_{0};     // landing pieces payloads were read into
  std::atomic<uint64_t> returned_{0};  // of those, pieces of payloads cut short
};

}  // namespace kvtier
