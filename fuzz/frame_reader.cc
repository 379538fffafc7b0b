// fuzz-sources: native/net/frame_reader.cc native/net/batch_layout.cc native/common/crc32c.cc
// libFuzzer target for the peer protocol's frame parser (native/net/frame_reader.h). Input:
//   byte 0  mode: bit 0 authenticated limits (else the handshake's), bit 1 answers of type 0x13
//           are placed into expected destinations, bit 2 large payload remainders are "read
//           directly" (DirectIov, then Consume without a source), bits 3-7 seed the chunk sizes
//   byte 1  expected destinations: count (low nibble) and length in 64-byte units (high nibble)
//   rest    the byte stream, fed in chunks of varying size as the network would deliver it
// Checks: no sanitizer report; every complete frame's metadata has its declared length; placed
// payloads' checksums match their destinations' bytes; an ERROR frame built from any text parses.
#include "../native/net/frame_reader.h"
#include "../native/net/batch_layout.h"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../native/common/crc32c.h"

namespace {

using kvtier::ByteSpan;
using kvtier::FrameReader;

constexpr uint32_t kAuthMeta = 8 + 40 * 1024;
constexpr uint64_t kAuthPayload = 1 << 20;

[[noreturn]] void Fail(const char* why) {
  std::fprintf(stderr, "frame_reader fuzz check failed: %s\n", why);
  std::abort();
}

// An ERROR frame round trip: what the transport sends before a close must parse as one frame.
void CheckErrorFrame(const std::vector<uint8_t>& text) {
  std::string s(text.begin(), text.end());
  std::vector<uint8_t> f = kvtier::ErrorFrame(kvtier::kErrorLimit, s);
  FrameReader r;
  size_t used = 0;
  size_t at = 0;
  FrameReader::Step step = FrameReader::Step::kMore;
  while (at < f.size()) {
    step = r.Consume(f.data() + at, f.size() - at, &used);
    at += used;
    if (step == FrameReader::Step::kMetaDone && r.header().payloadLen == 0) break;
    if (step == FrameReader::Step::kFault) Fail("an ERROR frame does not parse");
  }
  if (step != FrameReader::Step::kMetaDone || at != f.size())
    Fail("an ERROR frame has stray bytes");
  if (r.header().type != kvtier::kErrorFrameType) Fail("an ERROR frame has the wrong type");
  const std::vector<uint8_t>& m = r.meta();
  if (m.size() < 8 || kvtier::ReadLe32(m.data()) != kvtier::kErrorLimit ||
      kvtier::ReadLe32(m.data() + 4) != m.size() - 8 || m.size() - 8 > 1000) {
    Fail("an ERROR frame's metadata is malformed");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t mode = data[0];
  const bool auth = (mode & 1) != 0;
  const bool expectAnswers = (mode & 2) != 0;
  const bool direct = (mode & 4) != 0;
  uint32_t seed = mode >> 3;
  const size_t expectCount = data[1] & 0x0f;
  const uint64_t expectLen = static_cast<uint64_t>(data[1] >> 4) * 64;
  data += 2;
  size -= 2;

  FrameReader reader;
  if (auth) reader.SetLimits(kAuthMeta, kAuthPayload);
  std::vector<uint8_t> destinations(expectCount * expectLen);
  std::vector<ByteSpan> expect;
  for (size_t i = 0; i < expectCount; ++i) {
    expect.push_back({destinations.data() + i * expectLen, expectLen});
  }
  std::vector<uint8_t> payload;
  std::vector<ByteSpan> placed;

  size_t at = 0;
  while (at < size) {
    // Chunk sizes from a small LCG: 1 byte to a few KiB, like segments off a socket.
    seed = seed * 1103515245u + 12345u;
    size_t chunk = 1 + (seed >> 16) % 4096;
    size_t n = std::min(chunk, size - at);
    const uint8_t* src = data + at;
    size_t used = 0;
    FrameReader::Step step;
    if (direct && reader.inPayload() && reader.payloadOwed() >= 16) {
      // A direct read: the bytes go where DirectIov says, then are consumed without a source.
      iovec iov[8];
      int k = reader.DirectIov(iov, 8);
      size_t copied = 0;
      for (int i = 0; i < k && copied < n; ++i) {
        size_t c = std::min(iov[i].iov_len, n - copied);
        std::memcpy(iov[i].iov_base, src + copied, c);
        copied += c;
      }
      step = reader.Consume(nullptr, copied, &used);
      if (used != copied) Fail("a direct read was not taken whole");
    } else {
      step = reader.Consume(src, n, &used);
    }
    at += used;
    switch (step) {
      case FrameReader::Step::kMore:
        if (used == 0) Fail("no progress without a frame boundary");
        break;
      case FrameReader::Step::kFault:
        if (reader.fault().why.empty()) Fail("a fault without a reason");
        CheckErrorFrame(std::vector<uint8_t>(reader.fault().why.begin(), reader.fault().why.end()));
        return 0;
      case FrameReader::Step::kMetaDone: {
        const FrameReader::Header& h = reader.header();
        if (reader.meta().size() != h.metaLen) Fail("metadata of the wrong length");
        if (h.metaLen > (auth ? kAuthMeta : 4096u)) Fail("metadata beyond the limit");
        if (h.payloadLen > (auth ? kAuthPayload : 0)) Fail("payload beyond the limit");
        (void)kvtier::AnswerBytes(reader.meta(), 65536);
        placed.clear();
        if (h.payloadLen == 0) {
          reader.Next();
          break;
        }
        if (expectAnswers && h.type == 0x13) {
          std::string why;
          if (!kvtier::MatchPlacement(reader.meta(), expect, h.payloadLen, &placed, &why)) {
            if (why.empty()) Fail("a refused placement without a reason");
            return 0;  // the transport closes the connection here
          }
          uint64_t sum = 0;
          for (const ByteSpan& s : placed) sum += s.len;
          if (sum != h.payloadLen) Fail("a placement that does not cover the payload");
          reader.SetSpans(placed);
        } else {
          payload.assign(h.payloadLen, 0);
          reader.SetBuffer(payload.data());
        }
        break;
      }
      case FrameReader::Step::kFrameDone: {
        if (reader.placed()) {
          const std::vector<uint32_t>& crc = reader.checksums();
          if (crc.size() != placed.size()) Fail("one checksum per destination");
          for (size_t i = 0; i < placed.size(); ++i) {
            if (kvtier::Crc32c(0, placed[i].data, placed[i].len) != crc[i]) {
              Fail("a destination's checksum does not match its bytes");
            }
          }
        }
        reader.Next();
        break;
      }
    }
  }
  return 0;
}
