// Encoder kernels: the inner loops of fp8 and int8 encoding over rows of values in the block's
// dtype, in a scalar and an AVX2 form that produce the same bits (encode_rows.cc). A "rows" call
// covers `rows` rows of n values, row r starting `stride` elements after row r - 1, so a
// (slab, head) of a block (T rows of D, H·D apart) is one call.
#pragma once
#include <cstddef>
#include <cstdint>

#include "codec.h"

namespace kvtier::codec {

struct EncodeKernels {
  // *amax = max |x| over the rows; false (and *amax unspecified) when a value is not finite.
  bool (*amax)(const uint8_t* src, size_t n, size_t rows, size_t stride, float* amax);
  // amax[i] = max over the rows of |x[r][i]| for i < n; false when a value is not finite.
  bool (*column_amax)(const uint8_t* src, size_t n, size_t rows, size_t stride, float* amax);
  // codes[r·stride + i] = e4m3(x[r][i] / scale).
  void (*fp8)(const uint8_t* src, size_t n, size_t rows, size_t stride, float scale,
              uint8_t* codes);
  // codes[r·stride + i] = int8(clamp(rint(x[r][i] / s), -127, 127)), s = scales[i] when scales is
  // not null, else scale.
  void (*int8)(const uint8_t* src, size_t n, size_t rows, size_t stride, float scale,
               const float* scales, uint8_t* codes);
};

const EncodeKernels& ScalarEncoders(Dtype dtype);
// nullptr unless this CPU has AVX2 and F16C; the kernels take any n, rows and stride but are
// fastest with n a multiple of 8.
const EncodeKernels* Avx2Encoders(Dtype dtype);

}  // namespace kvtier::codec
