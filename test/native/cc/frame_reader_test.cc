// Plain unit tests of the frame reader (native/net/frame_reader.h): known frames in, known
// results out, with the input cut at every byte. Built and run by test/native/frame-reader.test.ts
// with the system C++ compiler; exits non-zero naming the first failed check.
#include "../../../native/net/frame_reader.h"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../../native/common/crc32c.h"

using kvtier::ByteSpan;
using kvtier::FrameReader;
using Step = FrameReader::Step;

static int checks = 0;
#define CHECK(cond)                                                                 \
  do {                                                                              \
    ++checks;                                                                       \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

static void Put32(std::vector<uint8_t>* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
static void Put64(std::vector<uint8_t>* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}

// A frame as docs/protocol.md lays it out: magic, type, flags, 2 reserved bytes, request id,
// metadata length, payload length; then the metadata and the payload.
static std::vector<uint8_t> Frame(uint8_t type, uint8_t flags, uint32_t rid,
                                  const std::vector<uint8_t>& meta,
                                  const std::vector<uint8_t>& payload,
                                  uint32_t magic = kvtier::kFrameMagic) {
  std::vector<uint8_t> f;
  Put32(&f, magic);
  f.push_back(type);
  f.push_back(flags);
  f.push_back(0);
  f.push_back(0);
  Put32(&f, rid);
  Put32(&f, static_cast<uint32_t>(meta.size()));
  Put64(&f, payload.size());
  f.insert(f.end(), meta.begin(), meta.end());
  f.insert(f.end(), payload.begin(), payload.end());
  return f;
}

static std::vector<uint8_t> Bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

// Feeds `in` in pieces of `piece` bytes; the payload goes to `buf` (if any). Returns the last step.
static Step Feed(FrameReader* r, const std::vector<uint8_t>& in, size_t piece, uint8_t* buf) {
  size_t at = 0;
  Step s = Step::kMore;
  while (at < in.size()) {
    size_t n = std::min(piece, in.size() - at);
    size_t used = 0;
    s = r->Consume(in.data() + at, n, &used);
    at += used;
    if (s == Step::kMetaDone && r->header().payloadLen > 0) r->SetBuffer(buf);
    if (s == Step::kFrameDone || s == Step::kFault) return s;
  }
  // A frame whose last bytes completed its metadata and which has no payload: one more call.
  if (s == Step::kMetaDone && r->header().payloadLen == 0) {
    size_t used = 0;
    s = r->Consume(nullptr, 0, &used);
  }
  return s;
}

int main() {
  const std::vector<uint8_t> meta = Bytes(40, 1);
  const std::vector<uint8_t> payload = Bytes(1000, 3);
  const std::vector<uint8_t> frame = Frame(0x10, 0x2, 77, meta, payload);

  // 1. One frame, in pieces of every size: the same header, metadata and payload come out.
  for (size_t piece = 1; piece <= frame.size(); piece += (piece < 64 ? 1 : 97)) {
    FrameReader r;
    r.SetLimits(4096, 1 << 20);
    std::vector<uint8_t> got(payload.size());
    CHECK(Feed(&r, frame, piece, got.data()) == Step::kFrameDone);
    CHECK(r.header().type == 0x10 && r.header().flags == 0x2 && r.header().requestId == 77);
    CHECK(r.header().metaLen == meta.size() && r.header().payloadLen == payload.size());
    CHECK(r.meta() == meta);
    CHECK(got == payload);
    CHECK(r.frames() == 1);
    CHECK(!r.inPayload());
  }

  // 2. Two frames back to back in one buffer: Consume stops at the first frame's end.
  {
    std::vector<uint8_t> two = frame;
    const std::vector<uint8_t> second = Frame(0x11, 0, 78, {}, {});
    two.insert(two.end(), second.begin(), second.end());
    FrameReader r;
    r.SetLimits(4096, 1 << 20);
    std::vector<uint8_t> got(payload.size());
    size_t used = 0, at = 0;
    Step s = Step::kMore;
    while ((s = r.Consume(two.data() + at, two.size() - at, &used)) != Step::kFrameDone) {
      at += used;
      if (s == Step::kMetaDone) r.SetBuffer(got.data());
      CHECK(s != Step::kFault);
    }
    at += used;
    CHECK(at == frame.size());
    CHECK(got == payload);
    r.Next();
    // A frame without payload: kMetaDone (nothing to place), then kFrameDone, all its bytes used.
    size_t rest = 0;
    while ((s = r.Consume(two.data() + at, two.size() - at, &used)) != Step::kFrameDone) {
      CHECK(s != Step::kFault);
      at += used;
      rest += used;
    }
    rest += used;
    CHECK(rest == second.size());
    CHECK(r.header().requestId == 78 && r.header().metaLen == 0 && r.header().payloadLen == 0);
    CHECK(r.frames() == 2);
  }

  // 3. Placed payloads: spans filled in order, each with its CRC-32C.
  {
    FrameReader r;
    r.SetLimits(4096, 1 << 20);
    std::vector<uint8_t> a(600), b(400);
    size_t used = 0, at = 0;
    Step s = r.Consume(frame.data(), frame.size(), &used);
    at += used;
    while (s == Step::kMore) {
      s = r.Consume(frame.data() + at, frame.size() - at, &used);
      at += used;
    }
    CHECK(s == Step::kMetaDone);
    r.SetSpans({ByteSpan{a.data(), a.size()}, ByteSpan{b.data(), b.size()}});
    CHECK(r.placed());
    s = r.Consume(frame.data() + at, frame.size() - at, &used);
    CHECK(s == Step::kFrameDone);
    CHECK(std::memcmp(a.data(), payload.data(), 600) == 0);
    CHECK(std::memcmp(b.data(), payload.data() + 600, 400) == 0);
    CHECK(r.checksums().size() == 2);
    CHECK(r.checksums()[0] == kvtier::Crc32c(0, payload.data(), 600));
    CHECK(r.checksums()[1] == kvtier::Crc32c(0, payload.data() + 600, 400));
  }

  // 4. Refusals, each before anything is allocated for the frame, with the ERROR code to send.
  {
    FrameReader r;
    r.SetLimits(4096, 1 << 20);
    std::vector<uint8_t> bad = Frame(0x10, 0, 1, meta, payload, 0x12345678);
    size_t used = 0;
    CHECK(r.Consume(bad.data(), bad.size(), &used) == Step::kFault);
    CHECK(r.fault().err == EPROTO && r.fault().code == kvtier::kErrorProtocol);
  }
  {
    FrameReader r;
    r.SetLimits(16, 1 << 20);  // metadata limit below the frame's 40 bytes
    size_t used = 0;
    CHECK(r.Consume(frame.data(), frame.size(), &used) == Step::kFault);
    CHECK(r.fault().err == EMSGSIZE && r.fault().code == kvtier::kErrorLimit);
  }
  {
    FrameReader r;
    r.SetLimits(4096, 999);  // payload limit one byte short
    size_t used = 0;
    CHECK(r.Consume(frame.data(), frame.size(), &used) == Step::kFault);
    CHECK(r.fault().err == EMSGSIZE && r.fault().code == kvtier::kErrorLimit);
  }
  {
    // Before authentication nothing but a handshake fits: no payload at all.
    FrameReader r;
    size_t used = 0;
    CHECK(r.Consume(frame.data(), frame.size(), &used) == Step::kFault);
    CHECK(r.fault().code == kvtier::kErrorLimit);
  }
  {
    // A payload with nowhere to go is refused, not dropped.
    FrameReader r;
    r.SetLimits(4096, 1 << 20);
    size_t used = 0, at = 0;
    Step s = Step::kMore;
    while ((s = r.Consume(frame.data() + at, frame.size() - at, &used)) == Step::kMore) at += used;
    at += used;
    CHECK(s == Step::kMetaDone);
    CHECK(r.Consume(frame.data() + at, frame.size() - at, &used) == Step::kFault);
    CHECK(r.fault().code == kvtier::kErrorProtocol);
  }

  // 5. A truncated frame stays incomplete: more is asked for, nothing is made up.
  {
    FrameReader r;
    r.SetLimits(4096, 1 << 20);
    std::vector<uint8_t> got(payload.size());
    std::vector<uint8_t> cut(frame.begin(), frame.end() - 1);
    CHECK(Feed(&r, cut, 13, got.data()) == Step::kMore);
    CHECK(r.partial() && r.payloadOwed() == 1 && r.frames() == 0);
  }

  // 6. The ERROR frame the transport sends: a valid frame of type ERROR, request 0.
  {
    std::vector<uint8_t> e = kvtier::ErrorFrame(kvtier::kErrorLimit, "too big");
    FrameReader r;
    r.SetLimits(4096, 0);
    CHECK(Feed(&r, e, e.size(), nullptr) == Step::kFrameDone);
    CHECK(r.header().type == kvtier::kErrorFrameType && r.header().requestId == 0);
  }

  std::printf("frame reader: %d checks passed\n", checks);
  return 0;
}
