#include "slot_header.h"

#include <cstring>

#include "../common/crc32c.h"

namespace kvtier {

namespace {

constexpr uint8_t kMagic[8] = {'K', 'V', 'T', 'B', 'L', 'K', '0', '1'};

uint32_t Le32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

uint64_t Le64(const uint8_t* p) { return uint64_t{Le32(p)} | uint64_t{Le32(p + 4)} << 32; }

}  // namespace

SlotHeader DecodeSlotHeader(const uint8_t* h, uint64_t block_bytes) {
  SlotHeader out;
  if (std::memcmp(h, kMagic, sizeof kMagic) != 0) return out;
  if (Crc32c(0, h, kSlotHeaderFields) != Le32(h + kSlotHeaderFields)) {
    out.status = SlotStatus::kTorn;
    return out;
  }
  out.status = SlotStatus::kBad;
  uint32_t key_length = Le32(h + 8);
  uint64_t length = Le64(h + 48);
  uint64_t generation = Le64(h + 64);
  if (key_length < kSlotKeyMin || key_length > kSlotKeyMax) return out;
  // Every block of a tier is block_bytes long; another length cannot be served whole.
  if (length != block_bytes) return out;
  if (generation > kSlotGenerationMax) return out;
  out.status = SlotStatus::kValid;
  out.key_length = key_length;
  std::memcpy(out.key, h + 16, key_length);
  out.length = length;
  out.checksum = Le32(h + 56);
  out.generation = generation;
  return out;
}

size_t DecodeSlotHeaders(const uint8_t* buf, size_t len, size_t header_bytes, uint64_t block_bytes,
                         SlotHeader* out, size_t out_capacity) {
  if (header_bytes < kSlotHeaderMin) return 0;
  size_t count = len / header_bytes;
  if (count > out_capacity) count = out_capacity;
  for (size_t i = 0; i < count; i++) out[i] = DecodeSlotHeader(buf + i * header_bytes, block_bytes);
  return count;
}

}  // namespace kvtier
