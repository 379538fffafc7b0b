// The file tier's slot headers (docs/format.md), decoded from the bytes of the header table. Pure
// code: no N-API, no I/O, so a fuzzer can drive it directly (fuzz/slot_header.cc).
#pragma once
#include <cstddef>
#include <cstdint>

namespace kvtier {

inline constexpr size_t kSlotHeaderFields = 72;  // bytes covered by the header's own CRC-32C
inline constexpr size_t kSlotHeaderMin = kSlotHeaderFields + 4;
inline constexpr size_t kSlotKeyMin = 16;
inline constexpr size_t kSlotKeyMax = 32;
// Generations are counted in JavaScript numbers: past 2^53 they no longer grow by one.
inline constexpr uint64_t kSlotGenerationMax = (uint64_t{1} << 53) - 1;

enum class SlotStatus : uint8_t {
  kEmpty = 0,  // no magic: a slot never written, or forgotten
  kValid = 1,  // a block of this tier
  kTorn = 2,   // magic, but the header fails its own CRC: a write torn by a crash
  kBad = 3,    // the CRC holds but a field is impossible: damaged, counted as corrupt
};

struct SlotHeader {
  SlotStatus status = SlotStatus::kEmpty;
  uint32_t key_length = 0;  // set when kValid
  uint8_t key[kSlotKeyMax] = {};
  uint64_t length = 0;
  uint32_t checksum = 0;
  uint64_t generation = 0;
};

// Decodes one header from `header_bytes` (>= kSlotHeaderMin) bytes. A header is valid when it has
// the magic, its CRC holds, its key length is 16 to 32, its payload length is `block_bytes`, and
// its generation is at most kSlotGenerationMax.
SlotHeader DecodeSlotHeader(const uint8_t* header, uint64_t block_bytes);

// Decodes the whole headers in buf[0, len): min(len / header_bytes, out_capacity) of them, into
// out. Returns how many were decoded; 0 when header_bytes < kSlotHeaderMin.
size_t DecodeSlotHeaders(const uint8_t* buf, size_t len, size_t header_bytes, uint64_t block_bytes,
                         SlotHeader* out, size_t out_capacity);

}  // namespace kvtier
