#include "rows.h"

#include <cstring>

#include "convert.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kvtier::codec {

namespace {

// --- scalar
// ---------------------------------------------------------------------------------------

struct Fp8Table {
  float v[256];
  Fp8Table() {
    for (int b = 0; b < 256; b++) v[b] = E4m3ToFloatInline(static_cast<uint8_t>(b));
  }
};
const Fp8Table kFp8;

inline void Store(Dtype dtype, uint8_t* out, size_t i, float x) {
  switch (dtype) {
    case Dtype::kFp16: {
      uint16_t h = FloatToHalfInline(x);
      std::memcpy(out + 2 * i, &h, 2);
      return;
    }
    case Dtype::kBf16: {
      uint16_t h = FloatToBf16Inline(x);
      std::memcpy(out + 2 * i, &h, 2);
      return;
    }
    case Dtype::kFp32:
      std::memcpy(out + 4 * i, &x, 4);
      return;
  }
}

template <Dtype D>
void Fp8Scalar(const uint8_t* codes, size_t n, float scale, uint8_t* out) {
  for (size_t i = 0; i < n; i++) Store(D, out, i, kFp8.v[codes[i]] * scale);
}

template <Dtype D>
void Int8Scalar(const uint8_t* codes, size_t n, float scale, const float* scales, uint8_t* out) {
  for (size_t i = 0; i < n; i++) {
    const float q = static_cast<float>(static_cast<int8_t>(codes[i]));
    Store(D, out, i, q * (scales != nullptr ? scales[i] : scale));
  }
}

inline unsigned KiviCode(const uint8_t* codes, uint64_t i, unsigned bits) {
  const uint64_t bit = i * bits;
  return (codes[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
}

template <Dtype D>
void KiviScalar(const uint8_t* codes, uint64_t first, size_t n, unsigned bits, const float* scales,
                const float* mins, size_t group, uint8_t* out) {
  for (size_t i = 0; i < n; i++) {
    const float prod = static_cast<float>(KiviCode(codes, first + i, bits)) * scales[i / group];
    Store(D, out, i, mins[i / group] + prod);
  }
}

void KiviParamsScalar(const uint8_t* pairs, size_t n, float* scales, float* mins) {
  for (size_t i = 0; i < n; i++) {
    uint16_t h[2];
    std::memcpy(h, pairs + 4 * i, 4);
    scales[i] = HalfToFloatInline(h[0]);
    mins[i] = HalfToFloatInline(h[1]);
  }
}

const RowKernels kScalar[3] = {
    {Fp8Scalar<Dtype::kFp16>, Int8Scalar<Dtype::kFp16>, KiviScalar<Dtype::kFp16>, KiviParamsScalar},
    {Fp8Scalar<Dtype::kBf16>, Int8Scalar<Dtype::kBf16>, KiviScalar<Dtype::kBf16>, KiviParamsScalar},
    {Fp8Scalar<Dtype::kFp32>, Int8Scalar<Dtype::kFp32>, KiviScalar<Dtype::kFp32>, KiviParamsScalar},
};

// --- AVX2 + F16C
// ---------------------------------------------------------------------------------- Eight values a
// step; the tail goes through the scalar loop, which computes the same operations.
#if defined(__x86_64__)

#define KVTIER_AVX2 __attribute__((target("avx2,f16c")))

template <Dtype D>
KVTIER_AVX2 inline void Store8(uint8_t* out, __m256 x) {
  if constexpr (D == Dtype::kFp32) {
    _mm256_storeu_ps(reinterpret_cast<float*>(out), x);
  } else if constexpr (D == Dtype::kFp16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                     _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    __m256i u = _mm256_castps_si256(x);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb));
    u = _mm256_srli_epi32(u, 16);
    __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), packed);
  }
}

// bf16 with round-to-nearest-even, as integers: the bits of x plus 0x7FFF plus the lowest kept bit.
// The result's top 16 bits are the bf16.
KVTIER_AVX2 inline __m256i Bf16Round(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  return _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb));
}

// Eight e4m3 codes, each in the high byte of a 16-bit lane (the low byte is ignored), as the fp16
// whose bits are the code's sign at bit 15 and its other bits at 7..13: an arithmetic shift right
// by one puts the magnitude in place and copies the sign into bit 14, which the mask clears.
KVTIER_AVX2 inline __m256 Fp8HighBytesToHalfValue(__m128i w) {
  const __m128i h = _mm_and_si128(_mm_srai_epi16(w, 1), _mm_set1_epi16(static_cast<short>(0xBF80)));
  return _mm256_cvtph_ps(h);
}

template <bool kFused>
KVTIER_AVX2 inline __m256 Fp8Value(__m256 half, __m256 s) {
  return kFused ? _mm256_mul_ps(half, s)
                : _mm256_mul_ps(_mm256_mul_ps(half, _mm256_set1_ps(256.0f)), s);
}

// Sixteen codes a step. value(code) * scale is (half(code) * 256) * scale in the scalar path;
// here half(code) * (256 * scale): 256 * scale is exact unless it overflows (then the two
// multiplies are kept), and both round the same exact product once, so the bits agree.
template <Dtype D, bool kFused>
KVTIER_AVX2 inline size_t Fp8Avx2Body(const uint8_t* codes, size_t n, float scale, uint8_t* out) {
  constexpr size_t kOut = D == Dtype::kFp32 ? 4 : 2;
  const __m256 s = _mm256_set1_ps(kFused ? scale * 256.0f : scale);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i));
    if constexpr (D == Dtype::kBf16) {
      // Even codes to one vector, odd to the other, so the two results interleave into place
      // with one blend: each 32-bit lane takes its even element's bf16 low, its odd one's high.
      const __m256 even = Fp8Value<kFused>(Fp8HighBytesToHalfValue(_mm_slli_epi16(x, 8)), s);
      const __m256 odd = Fp8Value<kFused>(Fp8HighBytesToHalfValue(x), s);
      const __m256i r =
          _mm256_blend_epi16(_mm256_srli_epi32(Bf16Round(even), 16), Bf16Round(odd), 0xAA);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i * kOut), r);
    } else {
      const __m128i zero = _mm_setzero_si128();
      const __m256 lo = Fp8Value<kFused>(Fp8HighBytesToHalfValue(_mm_unpacklo_epi8(zero, x)), s);
      const __m256 hi = Fp8Value<kFused>(Fp8HighBytesToHalfValue(_mm_unpackhi_epi8(zero, x)), s);
      Store8<D>(out + i * kOut, lo);
      Store8<D>(out + (i + 8) * kOut, hi);
    }
  }
  return i;
}

template <Dtype D>
KVTIER_AVX2 void Fp8Avx2(const uint8_t* codes, size_t n, float scale, uint8_t* out) {
  constexpr size_t kOut = D == Dtype::kFp32 ? 4 : 2;
  const float fused = scale * 256.0f;
  const size_t i = fused - fused == 0.0f ? Fp8Avx2Body<D, true>(codes, n, scale, out)
                                         : Fp8Avx2Body<D, false>(codes, n, scale, out);
  Fp8Scalar<D>(codes + i, n - i, scale, out + i * kOut);
}

template <Dtype D>
KVTIER_AVX2 void Int8Avx2(const uint8_t* codes, size_t n, float scale, const float* scales,
                          uint8_t* out) {
  constexpr size_t kOut = D == Dtype::kFp32 ? 4 : 2;
  const __m256 s1 = _mm256_set1_ps(scale);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i)));
    __m256 s = scales != nullptr ? _mm256_loadu_ps(scales + i) : s1;
    Store8<D>(out + i * kOut, _mm256_mul_ps(_mm256_cvtepi32_ps(q), s));
  }
  Int8Scalar<D>(codes + i, n - i, scale, scales != nullptr ? scales + i : nullptr, out + i * kOut);
}

// Eight codes from one 16-bit (2-bit codes) or 32-bit (4-bit codes) load: broadcast, shifted
// right per lane by 0, bits, 2·bits, ..., masked.
template <unsigned kBits>
KVTIER_AVX2 inline __m256 KiviCodes8(const uint8_t* at) {
  uint32_t word = 0;
  std::memcpy(&word, at, kBits);  // 8 codes of kBits bits are kBits bytes
  const __m256i shifts = kBits == 2 ? _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)
                                    : _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i q =
      _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts),
                       _mm256_set1_epi32((1 << kBits) - 1));
  return _mm256_cvtepi32_ps(q);
}

template <Dtype D, unsigned kBits>
KVTIER_AVX2 size_t KiviAvx2Body(const uint8_t* codes, size_t n, const float* scales,
                                const float* mins, size_t group, uint8_t* out) {
  constexpr size_t kOut = D == Dtype::kFp32 ? 4 : 2;
  size_t i = 0;
  if (group == 1) {
    for (; i + 8 <= n; i += 8) {
      const __m256 prod =
          _mm256_mul_ps(KiviCodes8<kBits>(codes + i * kBits / 8), _mm256_loadu_ps(scales + i));
      Store8<D>(out + i * kOut, _mm256_add_ps(_mm256_loadu_ps(mins + i), prod));
    }
  } else if (group % 8 == 0) {
    for (size_t g = 0; g < n / group; g++) {
      const __m256 s = _mm256_set1_ps(scales[g]), m = _mm256_set1_ps(mins[g]);
      for (const size_t end = i + group; i < end; i += 8) {
        const __m256 prod = _mm256_mul_ps(KiviCodes8<kBits>(codes + i * kBits / 8), s);
        Store8<D>(out + i * kOut, _mm256_add_ps(m, prod));
      }
    }
  }
  return i;
}

template <Dtype D>
KVTIER_AVX2 void KiviAvx2(const uint8_t* codes, uint64_t first, size_t n, unsigned bits,
                          const float* scales, const float* mins, size_t group, uint8_t* out) {
  constexpr size_t kOut = D == Dtype::kFp32 ? 4 : 2;
  size_t i = 0;
  // Byte-aligned rows only (every shape whose channels are a multiple of 8 has them).
  if ((first * bits) % 8 == 0) {
    const uint8_t* at = codes + first * bits / 8;
    i = bits == 2 ? KiviAvx2Body<D, 2>(at, n, scales, mins, group, out)
                  : KiviAvx2Body<D, 4>(at, n, scales, mins, group, out);
  }
  // i is a multiple of `group` (or 0), so the rest starts at a group's first element.
  KiviScalar<D>(codes, first + i, n - i, bits, scales + i / group, mins + i / group, group,
                out + i * kOut);
}

// Eight (scale, min) pairs a step: the low halves of the 32-bit pairs are the scales, the high
// halves the mins; packed apart and converted by F16C (exact, as HalfToFloat).
KVTIER_AVX2 void KiviParamsAvx2(const uint8_t* pairs, size_t n, float* scales, float* mins) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pairs + 4 * i));
    const __m256i lo = _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF));
    const __m256i hi = _mm256_srli_epi32(v, 16);
    // [s0-3 m0-3 | s4-7 m4-7] -> [s0-7 | m0-7]
    const __m256i sm = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
    _mm256_storeu_ps(scales + i, _mm256_cvtph_ps(_mm256_castsi256_si128(sm)));
    _mm256_storeu_ps(mins + i, _mm256_cvtph_ps(_mm256_extracti128_si256(sm, 1)));
  }
  KiviParamsScalar(pairs + 4 * i, n - i, scales + i, mins + i);
}

const RowKernels kAvx2[3] = {
    {Fp8Avx2<Dtype::kFp16>, Int8Avx2<Dtype::kFp16>, KiviAvx2<Dtype::kFp16>, KiviParamsAvx2},
    {Fp8Avx2<Dtype::kBf16>, Int8Avx2<Dtype::kBf16>, KiviAvx2<Dtype::kBf16>, KiviParamsAvx2},
    {Fp8Avx2<Dtype::kFp32>, Int8Avx2<Dtype::kFp32>, KiviAvx2<Dtype::kFp32>, KiviParamsAvx2},
};
#endif

}  // namespace

const RowKernels& ScalarRows(Dtype dtype) { return kScalar[static_cast<int>(dtype) - 1]; }

const RowKernels* Avx2Rows(Dtype dtype) {
#if defined(__x86_64__)
  return &kAvx2[static_cast<int>(dtype) - 1];
#else
  (void)dtype;
  return nullptr;
#endif
}

bool CpuHasAvx2() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

}  // namespace kvtier::codec
