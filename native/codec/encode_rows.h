// Encoder kernels: the inner loops of fp8, int8 and kivi encoding over rows of values in the
// block's dtype, in a scalar and an AVX2 form that produce the same bits (encode_rows.cc). A "rows"
// call covers `rows` rows of n values, row r starting `stride` elements after row r - 1, so a
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
  // kivi's ranges. lo = the least value (a zero taken as +0, so the sign of a zero min never
  // depends on the order values are met), hi = the greatest. Per column over the rows: returns
  // the first column holding a value that is not finite, or n. Over n consecutive values: false
  // when one is not finite.
  size_t (*kivi_column_range)(const uint8_t* src, size_t n, size_t rows, size_t stride, float* lo,
                              float* hi);
  bool (*kivi_range)(const uint8_t* src, size_t n, float* lo, float* hi);
  // Codes q = scale == 0 ? 0 : clamp(rint((x - min) / scale), 0, 2^bits - 1) for x[r][i], with
  // (scales[g], mins[g]) for g = i / group, into the zeroed little-endian bit stream at codes at
  // element first + r·stride + i.
  void (*kivi)(const uint8_t* src, size_t n, size_t rows, size_t stride, unsigned bits,
               const float* scales, const float* mins, size_t group, uint8_t* codes,
               uint64_t first);
};

const EncodeKernels& ScalarEncoders(Dtype dtype);
// nullptr unless this CPU has AVX2 and F16C; the kernels take any n, rows and stride but are
// fastest with n a multiple of 8.
const EncodeKernels* Avx2Encoders(Dtype dtype);

}  // namespace kvtier::codec
