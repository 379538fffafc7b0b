// fuzz-sources: native/io/slot_header.cc native/common/crc32c.cc
// libFuzzer target for the file tier's header scan (native/io/slot_header.h). The first byte picks
// a mode, the next bytes the geometry; the rest is a header table:
//   mode even: the bytes are decoded as they are (random tables: magic, torn and empty slots);
//   mode odd:  each header's CRC is first made to hold, so the field checks behind it are reached.
// Every decoded slot is checked against the format's rules (docs/format.md), and each valid one is
// re-encoded and compared with the input bytes.
#include "../native/io/slot_header.h"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../native/common/crc32c.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

uint32_t Le32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

uint64_t Le64(const uint8_t* p) { return uint64_t{Le32(p)} | uint64_t{Le32(p + 4)} << 32; }

void Put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier;
  if (size < 5) return 0;
  const bool fix_crc = data[0] & 1;
  // 64 to 4159 bytes a header: below kSlotHeaderMin must decode nothing.
  const size_t header_bytes = 64 + (size_t{data[1]} | (size_t{data[2]} & 0x0f) << 8);
  // Block sizes from a small table, or taken from the first header's length field.
  static constexpr uint64_t kBlockBytes[] = {0, 1, 4096, 16384, 2 << 20, ~uint64_t{0}};
  const uint8_t pick = data[3] % 8;
  data += 4;
  size -= 4;
  uint64_t block_bytes = pick < 6 ? kBlockBytes[pick] : size >= 56 ? Le64(data + 48) : 4096;

  std::vector<uint8_t> table(data, data + size);
  if (fix_crc && header_bytes >= kSlotHeaderMin) {
    for (size_t at = 0; at + header_bytes <= table.size(); at += header_bytes) {
      std::memcpy(table.data() + at, "KVTBLK01", 8);
      Put32(table.data() + at + kSlotHeaderFields, Crc32c(0, table.data() + at, kSlotHeaderFields));
    }
  }

  const size_t capacity = header_bytes >= kSlotHeaderMin ? table.size() / header_bytes : 0;
  std::vector<SlotHeader> out(capacity + 1);
  // An undersized output must bound the decode.
  size_t n = DecodeSlotHeaders(table.data(), table.size(), header_bytes, block_bytes, out.data(),
                               capacity > 0 ? capacity - 1 : 0);
  Check(n == (capacity > 0 ? capacity - 1 : 0));
  n = DecodeSlotHeaders(table.data(), table.size(), header_bytes, block_bytes, out.data(),
                        out.size());
  Check(n == capacity);

  for (size_t i = 0; i < n; i++) {
    const uint8_t* h = table.data() + i * header_bytes;
    const SlotHeader& s = out[i];
    const bool magic = std::memcmp(h, "KVTBLK01", 8) == 0;
    const bool crc = Crc32c(0, h, kSlotHeaderFields) == Le32(h + kSlotHeaderFields);
    switch (s.status) {
      case SlotStatus::kEmpty:
        Check(!magic);
        break;
      case SlotStatus::kTorn:
        Check(magic && !crc);
        break;
      case SlotStatus::kBad: {
        Check(magic && crc);
        const uint32_t key_length = Le32(h + 8);
        Check(key_length < kSlotKeyMin || key_length > kSlotKeyMax || Le64(h + 48) != block_bytes ||
              Le64(h + 64) > kSlotGenerationMax);
        break;
      }
      case SlotStatus::kValid: {
        Check(magic && crc);
        Check(s.key_length >= kSlotKeyMin && s.key_length <= kSlotKeyMax);
        Check(s.key_length == Le32(h + 8));
        Check(std::memcmp(s.key, h + 16, s.key_length) == 0);
        Check(s.length == block_bytes && s.length == Le64(h + 48));
        Check(s.checksum == Le32(h + 56));
        Check(s.generation == Le64(h + 64) && s.generation <= kSlotGenerationMax);
        break;
      }
      default:
        Check(false);
    }
  }
  return 0;
}
