// Scalar number conversions shared by the codecs' scalar and SIMD paths. Each is exact or rounds
// to nearest, ties to even, with IEEE single-precision operations only, so every machine gets the
// same bits (fp16 ones follow Maratyszcza's FP16 library and agree with F16C's VCVTPS2PH, NaNs
// included).
#pragma once
#include <cstdint>
#include <cstring>

namespace kvtier::codec {

inline uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float HalfToFloatInline(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = FromBits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = FromBits((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t result = sign | (two_w < (1u << 27) ? Bits(denormalized) : Bits(normalized));
  return FromBits(result);
}

inline uint16_t FloatToHalfInline(float f) {
  float base = (__builtin_fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = Bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = FromBits((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = Bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  // A NaN keeps its payload's top bits and is quieted, as F16C's VCVTPS2PH does.
  const uint32_t nan = 0x7E00u | ((w >> 13) & 0x3FFu);
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? nan : nonsign));
}

// No NaN reaches it from a decoder (scales and values are finite).
inline uint16_t FloatToBf16Inline(float f) {
  uint32_t u = Bits(f);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float Bf16ToFloat(uint16_t h) { return FromBits(static_cast<uint32_t>(h) << 16); }

// e4m3 as the fp16 whose bits are (b & 0x7F) << 7 (the same exponent and mantissa fields, bias
// 15 instead of 7), times 2^8: exact for every code, subnormals included. 0x7F (e4m3's NaN) thus
// reads as 480; the encoder never writes it.
inline float E4m3ToFloatInline(uint8_t b) {
  const uint16_t h = static_cast<uint16_t>(((b & 0x7Fu) << 7) | ((b & 0x80u) << 8));
  return HalfToFloatInline(h) * 256.0f;
}

// fp32 to e4m3: round to nearest even, saturating at +-448 (0x7E); 0x7F (NaN) is never written.
inline uint8_t FloatToE4m3Inline(float f) {
  const uint32_t u = Bits(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80);
  const float v = __builtin_fabsf(f);
  if (!(v < 448.0f)) return sign | 0x7E;  // saturate (NaN never reaches here: refused earlier)
  if (v < 0x1.0p-6f) {
    // Subnormal range: steps of 2^-9; code 8 is the smallest normal, 2^-6, as it should be.
    return sign | static_cast<uint8_t>(__builtin_nearbyintf(v * 512.0f));
  }
  uint32_t r = Bits(v);
  r += 0x7FFFFu + ((r >> 20) & 1u);  // round the mantissa to 3 bits, ties to even
  const int e = static_cast<int>(r >> 23) - 127;
  const uint32_t code = (static_cast<uint32_t>(e + 7) << 3) | ((r >> 20) & 7u);
  return sign | static_cast<uint8_t>(code > 0x7E ? 0x7E : code);
}

}  // namespace kvtier::codec
