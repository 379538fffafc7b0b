#include "encode_rows.h"

#include <cmath>
#include <cstring>

#include "convert.h"
#include "rows.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kvtier::codec {

namespace {

// --- scalar: the reference. Every operation here is the documented one (docs/codecs.md).

template <Dtype D>
inline float LoadAt(const uint8_t* src, size_t i) {
  if constexpr (D == Dtype::kFp32) {
    float f;
    std::memcpy(&f, src + 4 * i, 4);
    return f;
  } else {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    return D == Dtype::kFp16 ? HalfToFloatInline(h) : Bf16ToFloat(h);
  }
}

inline uint8_t QuantizeInt8(float x, float scale) {
  float q = std::nearbyint(x / scale);
  q = std::fmin(127.0f, std::fmax(-127.0f, q));
  return static_cast<uint8_t>(static_cast<int8_t>(q));
}

template <Dtype D>
bool AmaxScalar(const uint8_t* src, size_t n, size_t rows, size_t stride, float* out) {
  float amax = 0;
  for (size_t r = 0; r < rows; r++) {
    for (size_t i = 0; i < n; i++) {
      const float x = LoadAt<D>(src, r * stride + i);
      if (!std::isfinite(x)) return false;
      amax = std::fmax(amax, std::fabs(x));
    }
  }
  *out = amax;
  return true;
}

template <Dtype D>
bool ColumnAmaxScalar(const uint8_t* src, size_t n, size_t rows, size_t stride, float* amax) {
  for (size_t i = 0; i < n; i++) amax[i] = 0;
  for (size_t r = 0; r < rows; r++) {
    for (size_t i = 0; i < n; i++) {
      const float x = LoadAt<D>(src, r * stride + i);
      if (!std::isfinite(x)) return false;
      amax[i] = std::fmax(amax[i], std::fabs(x));
    }
  }
  return true;
}

template <Dtype D>
void Fp8Scalar(const uint8_t* src, size_t n, size_t rows, size_t stride, float scale,
               uint8_t* codes) {
  for (size_t r = 0; r < rows; r++) {
    for (size_t i = 0; i < n; i++) {
      codes[r * stride + i] = FloatToE4m3Inline(LoadAt<D>(src, r * stride + i) / scale);
    }
  }
}

template <Dtype D>
void Int8Scalar(const uint8_t* src, size_t n, size_t rows, size_t stride, float scale,
                const float* scales, uint8_t* codes) {
  for (size_t r = 0; r < rows; r++) {
    for (size_t i = 0; i < n; i++) {
      const float s = scales != nullptr ? scales[i] : scale;
      codes[r * stride + i] = QuantizeInt8(LoadAt<D>(src, r * stride + i), s);
    }
  }
}

template <Dtype D>
size_t KiviColumnRangeScalar(const uint8_t* src, size_t n, size_t rows, size_t stride, float* lo,
                             float* hi) {
  size_t bad = n;
  for (size_t i = 0; i < n; i++) {
    lo[i] = INFINITY;
    hi[i] = -INFINITY;
  }
  for (size_t r = 0; r < rows; r++) {
    for (size_t i = 0; i < n; i++) {
      const float x = LoadAt<D>(src, r * stride + i);
      if (!std::isfinite(x)) {
        if (i < bad) bad = i;
        continue;
      }
      lo[i] = x < lo[i] ? x : lo[i];
      hi[i] = x > hi[i] ? x : hi[i];
    }
  }
  for (size_t i = 0; i < n; i++) lo[i] += 0.0f;  // -0 + +0 is +0
  return bad;
}

template <Dtype D>
bool KiviRangeScalar(const uint8_t* src, size_t n, float* lo, float* hi) {
  float l = INFINITY, h = -INFINITY;
  for (size_t i = 0; i < n; i++) {
    const float x = LoadAt<D>(src, i);
    if (!std::isfinite(x)) return false;
    l = x < l ? x : l;
    h = x > h ? x : h;
  }
  *lo = l + 0.0f;
  *hi = h;
  return true;
}

inline uint8_t QuantizeKivi(float x, float scale, float min, float levels) {
  if (scale == 0) return 0;
  const float q = std::nearbyint((x - min) / scale);
  return static_cast<uint8_t>(std::fmin(levels, std::fmax(0.0f, q)));
}

template <Dtype D>
void KiviScalar(const uint8_t* src, size_t n, size_t rows, size_t stride, unsigned bits,
                const float* scales, const float* mins, size_t group, uint8_t* codes,
                uint64_t first) {
  const float levels = static_cast<float>((1u << bits) - 1);
  for (size_t r = 0; r < rows; r++) {
    for (size_t i = 0; i < n; i++) {
      const uint8_t q =
          QuantizeKivi(LoadAt<D>(src, r * stride + i), scales[i / group], mins[i / group], levels);
      const uint64_t bit = (first + r * stride + i) * bits;
      codes[bit / 8] |= static_cast<uint8_t>(q << (bit % 8));
    }
  }
}

const EncodeKernels kScalar[3] = {
    {AmaxScalar<Dtype::kFp16>, ColumnAmaxScalar<Dtype::kFp16>, Fp8Scalar<Dtype::kFp16>,
     Int8Scalar<Dtype::kFp16>, KiviColumnRangeScalar<Dtype::kFp16>, KiviRangeScalar<Dtype::kFp16>,
     KiviScalar<Dtype::kFp16>},
    {AmaxScalar<Dtype::kBf16>, ColumnAmaxScalar<Dtype::kBf16>, Fp8Scalar<Dtype::kBf16>,
     Int8Scalar<Dtype::kBf16>, KiviColumnRangeScalar<Dtype::kBf16>, KiviRangeScalar<Dtype::kBf16>,
     KiviScalar<Dtype::kBf16>},
    {AmaxScalar<Dtype::kFp32>, ColumnAmaxScalar<Dtype::kFp32>, Fp8Scalar<Dtype::kFp32>,
     Int8Scalar<Dtype::kFp32>, KiviColumnRangeScalar<Dtype::kFp32>, KiviRangeScalar<Dtype::kFp32>,
     KiviScalar<Dtype::kFp32>},
};

// --- AVX2 + F16C: eight values a step, the same IEEE operations as the scalar kernels (division,
// not a reciprocal; rounding in the current mode, as nearbyint does); a row's last n % 8 values go
// through the scalar code.
#if defined(__x86_64__)

#define KVTIER_AVX2 __attribute__((target("avx2,f16c")))

template <Dtype D>
KVTIER_AVX2 inline __m256 Load8(const uint8_t* src, size_t i) {
  if constexpr (D == Dtype::kFp32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(src + 4 * i));
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    if constexpr (D == Dtype::kFp16) return _mm256_cvtph_ps(h);  // exact, as HalfToFloat
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

// |x|'s bits: for non-negative floats the integer order is the numeric order, and every NaN and
// infinity is at least 0x7F800000, so an integer max finds both the amax and any non-finite value.
KVTIER_AVX2 inline __m256i AbsBits(__m256 x) {
  return _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7FFFFFFF));
}

KVTIER_AVX2 inline uint32_t HorizontalMax(__m256i v) {
  __m128i m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0x4E));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0xB1));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(m));
}

constexpr uint32_t kInfBits = 0x7F800000u;

template <Dtype D>
KVTIER_AVX2 bool AmaxAvx2(const uint8_t* src, size_t n, size_t rows, size_t stride, float* out) {
  const size_t n8 = n & ~size_t{7};
  __m256i acc = _mm256_setzero_si256();
  for (size_t r = 0; r < rows; r++) {
    for (size_t i = 0; i < n8; i += 8) {
      acc = _mm256_max_epu32(acc, AbsBits(Load8<D>(src, r * stride + i)));
    }
  }
  const uint32_t bits = HorizontalMax(acc);
  if (bits >= kInfBits) return false;
  float tail = 0;
  if (n8 < n &&
      !AmaxScalar<D>(src + n8 * (D == Dtype::kFp32 ? 4 : 2), n - n8, rows, stride, &tail)) {
    return false;
  }
  *out = std::fmax(FromBits(bits), tail);
  return true;
}

template <Dtype D>
KVTIER_AVX2 bool ColumnAmaxAvx2(const uint8_t* src, size_t n, size_t rows, size_t stride,
                                float* amax) {
  const size_t n8 = n & ~size_t{7};
  __m256i all = _mm256_setzero_si256();
  for (size_t i = 0; i < n8; i += 8) {
    __m256i acc = _mm256_setzero_si256();
    for (size_t r = 0; r < rows; r++) {
      acc = _mm256_max_epu32(acc, AbsBits(Load8<D>(src, r * stride + i)));
    }
    all = _mm256_max_epu32(all, acc);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(amax + i), acc);
  }
  if (HorizontalMax(all) >= kInfBits) return false;
  if (n8 == n) return true;
  return ColumnAmaxScalar<D>(src + n8 * (D == Dtype::kFp32 ? 4 : 2), n - n8, rows, stride,
                             amax + n8);
}

// FloatToE4m3 on eight lanes. Normal range: the mantissa rounded to 3 bits (ties to even) and
// the bits above bit 20 rebased, (r >> 20) - 960 = ((e + 7) << 3) | m; every |x| >= 448, infinity
// included, lands at or beyond 0x7E and is clamped there. Below 2^-6: rint(|x| · 512).
KVTIER_AVX2 inline __m256i E4m3x8(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), _mm256_set1_epi32(0x80));
  const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(a, 20), _mm256_set1_epi32(1));
  const __m256i r = _mm256_add_epi32(a, _mm256_add_epi32(_mm256_set1_epi32(0x7FFFF), lsb));
  const __m256i normal = _mm256_min_epi32(
      _mm256_sub_epi32(_mm256_srli_epi32(r, 20), _mm256_set1_epi32(960)), _mm256_set1_epi32(0x7E));
  const __m256 v = _mm256_castsi256_ps(a);
  const __m256i sub = _mm256_cvtps_epi32(_mm256_mul_ps(v, _mm256_set1_ps(512.0f)));
  const __m256 small = _mm256_cmp_ps(v, _mm256_set1_ps(0x1.0p-6f), _CMP_LT_OQ);
  const __m256i code = _mm256_blendv_epi8(normal, sub, _mm256_castps_si256(small));
  return _mm256_or_si256(code, sign);
}

// Eight 32-bit lanes holding byte values to eight bytes; `is_signed` for int8 codes.
template <bool kSigned>
KVTIER_AVX2 inline void StoreBytes8(uint8_t* out, __m256i v) {
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i b = kSigned ? _mm_packs_epi16(w, w) : _mm_packus_epi16(w, w);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(out), b);
}

template <Dtype D>
KVTIER_AVX2 void Fp8Avx2(const uint8_t* src, size_t n, size_t rows, size_t stride, float scale,
                         uint8_t* codes) {
  const size_t n8 = n & ~size_t{7};
  const __m256 s = _mm256_set1_ps(scale);
  for (size_t r = 0; r < rows; r++) {
    const size_t row = r * stride;
    for (size_t i = 0; i < n8; i += 8) {
      StoreBytes8<false>(codes + row + i, E4m3x8(_mm256_div_ps(Load8<D>(src, row + i), s)));
    }
  }
  if (n8 < n) {
    Fp8Scalar<D>(src + n8 * (D == Dtype::kFp32 ? 4 : 2), n - n8, rows, stride, scale, codes + n8);
  }
}

template <Dtype D>
KVTIER_AVX2 void Int8Avx2(const uint8_t* src, size_t n, size_t rows, size_t stride, float scale,
                          const float* scales, uint8_t* codes) {
  const size_t n8 = n & ~size_t{7};
  const __m256 s1 = _mm256_set1_ps(scale);
  const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
  for (size_t r = 0; r < rows; r++) {
    const size_t row = r * stride;
    for (size_t i = 0; i < n8; i += 8) {
      const __m256 s = scales != nullptr ? _mm256_loadu_ps(scales + i) : s1;
      __m256 q =
          _mm256_round_ps(_mm256_div_ps(Load8<D>(src, row + i), s), _MM_FROUND_CUR_DIRECTION);
      q = _mm256_min_ps(hi, _mm256_max_ps(lo, q));
      StoreBytes8<true>(codes + row + i, _mm256_cvttps_epi32(q));
    }
  }
  if (n8 < n) {
    Int8Scalar<D>(src + n8 * (D == Dtype::kFp32 ? 4 : 2), n - n8, rows, stride, scale,
                  scales != nullptr ? scales + n8 : nullptr, codes + n8);
  }
}

// min_ps(x, lo) is x < lo ? x : lo and max_ps(x, hi) is x > hi ? x : hi, the scalar kernels'
// comparisons exactly (for finite values, the only ones whose range is used).
template <Dtype D>
KVTIER_AVX2 size_t KiviColumnRangeAvx2(const uint8_t* src, size_t n, size_t rows, size_t stride,
                                       float* lo, float* hi) {
  const size_t n8 = n & ~size_t{7};
  size_t bad = n;
  for (size_t i = 0; i < n8; i += 8) {
    __m256 l = _mm256_set1_ps(INFINITY), h = _mm256_set1_ps(-INFINITY);
    __m256i big = _mm256_setzero_si256();
    for (size_t r = 0; r < rows; r++) {
      const __m256 x = Load8<D>(src, r * stride + i);
      big = _mm256_max_epu32(big, AbsBits(x));
      l = _mm256_min_ps(x, l);
      h = _mm256_max_ps(x, h);
    }
    _mm256_storeu_ps(lo + i, _mm256_add_ps(l, _mm256_setzero_ps()));
    _mm256_storeu_ps(hi + i, h);
    if (bad == n) {
      const __m256i nonfinite =
          _mm256_cmpgt_epi32(big, _mm256_set1_epi32(static_cast<int>(kInfBits) - 1));
      const int mask = _mm256_movemask_ps(_mm256_castsi256_ps(nonfinite));
      if (mask != 0) bad = i + static_cast<size_t>(__builtin_ctz(static_cast<unsigned>(mask)));
    }
  }
  if (n8 < n) {
    const size_t tail = KiviColumnRangeScalar<D>(src + n8 * (D == Dtype::kFp32 ? 4 : 2), n - n8,
                                                 rows, stride, lo + n8, hi + n8);
    if (bad == n && tail < n - n8) bad = n8 + tail;
  }
  return bad;
}

template <Dtype D>
KVTIER_AVX2 bool KiviRangeAvx2(const uint8_t* src, size_t n, float* lo, float* hi) {
  if (n < 8 || n % 8 != 0) return KiviRangeScalar<D>(src, n, lo, hi);
  __m256 l = _mm256_set1_ps(INFINITY), h = _mm256_set1_ps(-INFINITY);
  __m256i big = _mm256_setzero_si256();
  for (size_t i = 0; i < n; i += 8) {
    const __m256 x = Load8<D>(src, i);
    big = _mm256_max_epu32(big, AbsBits(x));
    l = _mm256_min_ps(x, l);
    h = _mm256_max_ps(x, h);
  }
  if (HorizontalMax(big) >= kInfBits) return false;
  // Finite values: the least and greatest are unique up to the sign of a zero, which the +0
  // below settles for lo (hi's sign is never stored).
  float ls[8], hs[8];
  _mm256_storeu_ps(ls, l);
  _mm256_storeu_ps(hs, h);
  float lm = ls[0], hm = hs[0];
  for (int j = 1; j < 8; j++) {
    lm = ls[j] < lm ? ls[j] : lm;
    hm = hs[j] > hm ? hs[j] : hm;
  }
  *lo = lm + 0.0f;
  *hi = hm;
  return true;
}

// Eight codes (0 to 15 in 32-bit lanes) to 8·kBits bits, lane j at bit j·kBits.
template <unsigned kBits>
KVTIER_AVX2 inline uint32_t PackCodes8(__m256i q) {
  const __m256i shifts = kBits == 2 ? _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)
                                    : _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i v = _mm256_sllv_epi32(q, shifts);
  __m128i m = _mm_or_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_or_si128(m, _mm_shuffle_epi32(m, 0x4E));
  m = _mm_or_si128(m, _mm_shuffle_epi32(m, 0xB1));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(m));
}

template <Dtype D, unsigned kBits>
KVTIER_AVX2 inline void KiviStore8(const uint8_t* src, size_t at, __m256 s, __m256 m,
                                   uint8_t* codes, uint64_t element) {
  const __m256 levels = _mm256_set1_ps(static_cast<float>((1u << kBits) - 1));
  __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_sub_ps(Load8<D>(src, at), m), s),
                             _MM_FROUND_CUR_DIRECTION);
  q = _mm256_min_ps(levels, _mm256_max_ps(_mm256_setzero_ps(), q));
  // A zero scale (a constant group) codes 0: its lanes' quotients (inf or NaN) are dropped.
  const __m256 zero = _mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_EQ_OQ);
  const __m256i qi = _mm256_andnot_si256(_mm256_castps_si256(zero), _mm256_cvttps_epi32(q));
  const uint32_t word = PackCodes8<kBits>(qi);
  std::memcpy(codes + element * kBits / 8, &word, kBits);  // 8 codes are kBits bytes
}

template <Dtype D, unsigned kBits>
KVTIER_AVX2 size_t KiviAvx2Body(const uint8_t* src, size_t n, size_t rows, size_t stride,
                                const float* scales, const float* mins, size_t group,
                                uint8_t* codes, uint64_t first) {
  const size_t n8 = n & ~size_t{7};
  if (group == 1) {
    for (size_t i = 0; i < n8; i += 8) {
      const __m256 s = _mm256_loadu_ps(scales + i), m = _mm256_loadu_ps(mins + i);
      for (size_t r = 0; r < rows; r++) {
        KiviStore8<D, kBits>(src, r * stride + i, s, m, codes, first + r * stride + i);
      }
    }
    return n8;
  }
  if (group % 8 != 0 || rows != 1) return 0;
  for (size_t g = 0; g < n / group; g++) {
    const __m256 s = _mm256_set1_ps(scales[g]), m = _mm256_set1_ps(mins[g]);
    for (size_t i = g * group; i < (g + 1) * group; i += 8) {
      KiviStore8<D, kBits>(src, i, s, m, codes, first + i);
    }
  }
  return n / group * group;
}

// Whole words are stored, so the SIMD path needs every row's run of 8 codes to start on a byte:
// first and stride multiples of 8 (a head dimension that is a multiple of 8 gives that).
template <Dtype D>
KVTIER_AVX2 void KiviAvx2(const uint8_t* src, size_t n, size_t rows, size_t stride, unsigned bits,
                          const float* scales, const float* mins, size_t group, uint8_t* codes,
                          uint64_t first) {
  size_t done = 0;
  if (first % 8 == 0 && (rows == 1 || stride % 8 == 0)) {
    done = bits == 2 ? KiviAvx2Body<D, 2>(src, n, rows, stride, scales, mins, group, codes, first)
                     : KiviAvx2Body<D, 4>(src, n, rows, stride, scales, mins, group, codes, first);
  }
  if (done < n) {
    KiviScalar<D>(src + done * (D == Dtype::kFp32 ? 4 : 2), n - done, rows, stride, bits,
                  scales + done / group, mins + done / group, group, codes, first + done);
  }
}

const EncodeKernels kAvx2[3] = {
    {AmaxAvx2<Dtype::kFp16>, ColumnAmaxAvx2<Dtype::kFp16>, Fp8Avx2<Dtype::kFp16>,
     Int8Avx2<Dtype::kFp16>, KiviColumnRangeAvx2<Dtype::kFp16>, KiviRangeAvx2<Dtype::kFp16>,
     KiviAvx2<Dtype::kFp16>},
    {AmaxAvx2<Dtype::kBf16>, ColumnAmaxAvx2<Dtype::kBf16>, Fp8Avx2<Dtype::kBf16>,
     Int8Avx2<Dtype::kBf16>, KiviColumnRangeAvx2<Dtype::kBf16>, KiviRangeAvx2<Dtype::kBf16>,
     KiviAvx2<Dtype::kBf16>},
    {AmaxAvx2<Dtype::kFp32>, ColumnAmaxAvx2<Dtype::kFp32>, Fp8Avx2<Dtype::kFp32>,
     Int8Avx2<Dtype::kFp32>, KiviColumnRangeAvx2<Dtype::kFp32>, KiviRangeAvx2<Dtype::kFp32>,
     KiviAvx2<Dtype::kFp32>},
};
#endif

}  // namespace

const EncodeKernels& ScalarEncoders(Dtype dtype) { return kScalar[static_cast<int>(dtype) - 1]; }

const EncodeKernels* Avx2Encoders(Dtype dtype) {
#if defined(__x86_64__)
  return CpuHasAvx2() ? &kAvx2[static_cast<int>(dtype) - 1] : nullptr;
#else
  (void)dtype;
  return nullptr;
#endif
}

}  // namespace kvtier::codec
