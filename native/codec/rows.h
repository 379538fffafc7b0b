// Row decoders: the inner loops of fp8 and int8 decoding, one (token, head) row of headDim values
// at a time, in a scalar and an AVX2 form that produce the same bits (rows.cc).
#pragma once
#include <cstddef>
#include <cstdint>

#include "codec.h"

namespace kvtier::codec {

// out[i] = convert(value(code[i]) * scale), scale either one number (scales == nullptr) or
// scales[i]. value() is E4m3ToFloat for fp8 rows and the signed byte for int8 rows.
//
// kivi: out[i] = convert(mins[g] + q[i] * scales[g]) (an fp32 multiply, then an fp32 add) for
// g = i / group, q[i] the `bits`-bit code of element first + i of the little-endian bit stream
// at codes. Keys pass group 1 (a (scale, min) per channel), values their group size.
struct RowKernels {
  void (*fp8)(const uint8_t* codes, size_t n, float scale, uint8_t* out);
  void (*int8)(const uint8_t* codes, size_t n, float scale, const float* scales, uint8_t* out);
  void (*kivi)(const uint8_t* codes, uint64_t first, size_t n, unsigned bits, const float* scales,
               const float* mins, size_t group, uint8_t* out);
  // kivi's group parameters, n little-endian fp16 (scale, min) pairs, to fp32 (exact).
  void (*kivi_params)(const uint8_t* pairs, size_t n, float* scales, float* mins);
};

// Kernels for one output dtype (kivi_params is the same in all three) and instruction set; the AVX2
// table exists only on x86-64.
const RowKernels& ScalarRows(Dtype dtype);
const RowKernels* Avx2Rows(Dtype dtype);
bool CpuHasAvx2();

}  // namespace kvtier::codec
