// CRC-32C (Castagnoli), the checksum every stored block carries. Uses the SSE4.2 instruction when
// the CPU has it and a table otherwise; both give the same value.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kvtier {

// Continues a CRC: pass 0 to start. The result is final (already inverted).
uint32_t Crc32c(uint32_t crc, const void* data, size_t len);

}  // namespace kvtier
