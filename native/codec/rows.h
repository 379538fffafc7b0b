// Row decoders: the inner loops of fp8 and int8 decoding, one (token, head) row of headDim values
// at a time, in a scalar and an AVX2 form that produce the same bits (codec_avx2.cc).
#pragma once
#include <cstddef>
#include <cstdint>

#include "codec.h"

namespace kvtier::codec {

// out[i] = convert(value(code[i]) * scale), scale either one number (scales == nullptr) or
// scales[i]. value() is E4m3ToFloat for fp8 rows and the signed byte for int8 rows.
struct RowKernels {
  void (*fp8)(const uint8_t* codes, size_t n, float scale, uint8_t* out);
  void (*int8)(const uint8_t* codes, size_t n, float scale, const float* scales, uint8_t* out);
};

// Kernels for one output dtype and instruction set; the AVX2 table exists only on x86-64.
const RowKernels& ScalarRows(Dtype dtype);
const RowKernels* Avx2Rows(Dtype dtype);
bool CpuHasAvx2();

}  // namespace kvtier::codec
