#include "batch_layout.h"

#include <algorithm>

namespace kvtier {

bool MatchPlacement(const std::vector<uint8_t>& meta, const std::vector<ByteSpan>& expect,
                    uint64_t payloadLen, std::vector<ByteSpan>* place, std::string* why) {
  place->clear();
  size_t count = expect.size();
  if (meta.size() < kBatchFixedBytes ||
      (meta.size() - kBatchFixedBytes) / kResultEntryBytes < count ||
      ReadLe32(meta.data()) != count) {
    *why = "an answer's descriptor count does not match its request";
    return false;
  }
  uint64_t sum = 0;
  for (size_t i = 0; i < count; ++i) {
    if (meta[kBatchFixedBytes + i * kResultEntryBytes] != kResultStatusOk) continue;
    // Destinations are checked against their memory when given; their sum cannot overflow, but
    // the check keeps that true whatever the caller passes.
    if (expect[i].len > UINT64_MAX - sum) {
      *why = "an answer's destinations overflow";
      return false;
    }
    sum += expect[i].len;
    if (expect[i].len > 0) place->push_back(expect[i]);
  }
  if (sum != payloadLen) {
    *why = "an answer carries " + std::to_string(payloadLen) + " payload bytes; its " +
           "descriptors account for " + std::to_string(sum);
    place->clear();
    return false;
  }
  return true;
}

uint64_t AnswerBytes(const std::vector<uint8_t>& meta, uint64_t unit) {
  if (meta.size() < kBatchFixedBytes) return 0;
  uint64_t count = ReadLe32(meta.data());
  uint64_t fits = (meta.size() - kBatchFixedBytes) / kKeyEntryBytes;
  count = std::min(count, fits);
  if (unit != 0 && count > UINT64_MAX / unit) return UINT64_MAX;
  return count * unit;
}

}  // namespace kvtier
