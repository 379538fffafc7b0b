// The peer protocol's frame parser (docs/protocol.md, "Frames"), with no sockets and no N-API:
// bytes go in, in whatever pieces the network delivers them, and frames come out. The TCP
// transport feeds it what it reads; the fuzz target (fuzz/frame_reader.cc) feeds it anything.
//
// A frame is a 24-byte header, metaLength bytes of metadata and payloadLength bytes of payload.
// The reader checks the header against its limits before it allocates anything, collects the
// metadata, then stops (kMetaDone) so that its owner can say where the payload goes: one
// contiguous buffer, or a list of destinations (each checksummed as its bytes arrive). Payload
// bytes are copied there from the input, or, for large payloads, read there by the owner directly
// (DirectIov, then Consume with no source).
#pragma once
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvtier {

inline constexpr uint32_t kFrameMagic = 0x5054564B;  // "KVTP" read as little-endian bytes
inline constexpr size_t kFrameHeaderBytes = 24;

// ERROR frames (docs/protocol.md, "Errors") the transport itself sends before it closes a
// connection for a transport-level limit.
inline constexpr uint8_t kErrorFrameType = 0x05;
inline constexpr uint32_t kErrorProtocol = 1;
inline constexpr uint32_t kErrorLimit = 4;

struct ByteSpan {
  uint8_t* data;
  uint64_t len;
};

uint32_t ReadLe32(const uint8_t* p);
uint64_t ReadLe64(const uint8_t* p);

class FrameReader {
 public:
  enum class Step {
    kMore,      // all input used, the frame is not complete
    kMetaDone,  // header and metadata complete: call SetBuffer or SetSpans (or nothing: no payload)
    kFrameDone,  // the frame is complete: read it, then call Next()
    kFault,      // the frame broke a rule: fault() says which; the reader takes no more input
  };
  struct Header {
    uint8_t type = 0;
    uint8_t flags = 0;
    uint32_t requestId = 0;
    uint32_t metaLen = 0;
    uint64_t payloadLen = 0;
  };
  struct Fault {
    int err = 0;        // EPROTO or EMSGSIZE
    uint32_t code = 0;  // the ERROR frame code that says so to the peer
    std::string why;
  };

  // Nothing but a handshake fits until the owner raises the limits after authentication.
  void SetLimits(uint32_t maxMeta, uint64_t maxPayload) {
    maxMeta_ = maxMeta;
    maxPayload_ = maxPayload;
  }

  // Takes up to n bytes of the current frame from src; with src null, n payload bytes that a
  // direct read (DirectIov) already put in place. Stops at the end of the metadata and at the end
  // of the frame, so the input may hold the next frame's bytes; *used says how many were taken.
  Step Consume(const uint8_t* src, size_t n, size_t* used);

  // After kMetaDone, with payloadLen > 0: the payload goes into buf (payloadLen bytes) ...
  void SetBuffer(uint8_t* buf);
  // ... or into these destinations in order (their lengths must add up to payloadLen, which
  // MatchPlacement checks), each one's CRC-32C computed as it fills.
  void SetSpans(std::vector<ByteSpan> spans);

  // Where a direct read of the rest of the payload goes; returns the iovec count.
  int DirectIov(iovec* iov, int max) const;

  // Ready for the next frame; the metadata and checksums were moved out or are dropped.
  void Next();

  const Header& header() const { return h_; }
  std::vector<uint8_t>& meta() { return meta_; }
  std::vector<uint32_t>& checksums() { return crc_; }
  const Fault& fault() const { return fault_; }
  bool inPayload() const { return phase_ == kPayload; }
  bool placed() const { return !spans_.empty(); }
  uint64_t payloadOwed() const { return h_.payloadLen - payloadHave_; }
  // Some bytes of a frame have arrived and not all of it.
  bool partial() const { return phase_ != kHeader || headerHave_ > 0; }
  // The number of whole frames completed so far.
  uint64_t frames() const { return frames_; }

 private:
  enum Phase { kHeader, kMeta, kPayload, kDone, kFaulted };
  Step Refuse(int err, uint32_t code, std::string why);
  Step MetaDone();

  uint32_t maxMeta_ = 4096;
  uint64_t maxPayload_ = 0;
  Phase phase_ = kHeader;
  uint8_t header_[kFrameHeaderBytes] = {0};
  size_t headerHave_ = 0;
  Header h_;
  std::vector<uint8_t> meta_;
  size_t metaHave_ = 0;
  uint64_t payloadHave_ = 0;
  uint8_t* buf_ = nullptr;
  std::vector<ByteSpan> spans_;
  std::vector<uint32_t> crc_;
  size_t spanAt_ = 0;
  uint64_t spanOff_ = 0;
  Fault fault_;
  uint64_t frames_ = 0;
};

// An ERROR frame (requestId 0: it concerns the connection) with this code and text.
std::vector<uint8_t> ErrorFrame(uint32_t code, const std::string& text);

}  // namespace kvtier
