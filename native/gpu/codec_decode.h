// Decoding one element of an encoded KV block (docs/codecs.md), written once for two compilers:
// nvcc builds it into the decode kernels of kernels.cu, and the addon builds it for the CPU as
// the kernels' host reference (codec_reference.cc), which tests compare byte for byte with
// native/codec's decoder. So what the tests check on a machine without a GPU is the arithmetic
// the GPU runs.
//
// Each value is the CPU decoder's operations exactly: one fp32 multiply (fp8, int8) or a multiply
// then an add (kivi), each rounded to nearest even (__fmul_rn / __fadd_rn on the device, so nvcc
// can never contract them into an FMA; the addon is built with -ffp-contract=off), then the same
// integer-and-float conversion to fp16 or bf16 as native/codec/convert.h. Deliberately no headers
// and no standard library: kernels.cu is compiled to PTX on its own.
#pragma once

#if defined(__CUDACC__)
#define KVTIER_HD __host__ __device__ __forceinline__
#else
#define KVTIER_HD inline
#endif

namespace kvtier {
namespace gpucodec {

typedef unsigned long long u64;

// Codec and dtype numbers are the header's (codec.h): 1 fp8-e4m3, 2 int8, 3 kivi2, 4 kivi4;
// 1 fp16, 2 bf16, 3 fp32; int8 scales 1 per token, 2 keys per channel / values per token.
enum : unsigned { kFp8 = 1, kInt8 = 2, kKivi2 = 3, kKivi4 = 4 };
enum : unsigned { kFp16 = 1, kBf16 = 2, kFp32 = 3 };
enum : unsigned { kScalesToken = 1, kScalesKivi = 2 };

constexpr u64 kHeaderBytes = 32;

// One block's geometry, computed on the host (MakeShape in codec_reference.cc) and passed to the
// kernels by value. Mirrored field for field by the struct kernels.cu sees (it is this one).
struct Shape {
  unsigned codec, dtype, scales, bits;  // bits: kivi's code width, else 0
  u64 T, H, D, G;
  u64 slab;                        // T·H·D: elements of one layer's K or V
  u64 elements;                    // L·2·slab
  u64 codesAt;                     // payload offset of the codes
  u64 layerGroups;                 // kivi: (scale, min) pairs per layer
  u64 slabCodes;                   // kivi: code bytes per slab
  u64 encodedBytes, decodedBytes;  // one block each, the encoded one with its header
};

KVTIER_HD unsigned BitsOf(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  unsigned u;
  __builtin_memcpy(&u, &f, 4);
  return u;
#endif
}

KVTIER_HD float FloatOf(unsigned u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
#endif
}

KVTIER_HD float Mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

KVTIER_HD float Add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// native/codec/convert.h's HalfToFloatInline: exact for every fp16.
KVTIER_HD float HalfToFloat(unsigned h) {
  const unsigned w = h << 16;
  const unsigned sign = w & 0x80000000u;
  const unsigned two_w = w + w;
  const float normalized = Mul(FloatOf((two_w >> 4) + (0xE0u << 23)), 0x1.0p-112f);
  const float denormalized = Add(FloatOf((two_w >> 17) | (126u << 23)), -0.5f);
  return FloatOf(sign | (two_w < (1u << 27) ? BitsOf(denormalized) : BitsOf(normalized)));
}

// native/codec/convert.h's FloatToHalfInline: round to nearest even, a NaN keeps its top
// payload bits, quieted.
KVTIER_HD unsigned FloatToHalf(float f) {
  float base = Mul(Mul(FloatOf(BitsOf(f) & 0x7FFFFFFFu), 0x1.0p+112f), 0x1.0p-110f);
  const unsigned w = BitsOf(f);
  const unsigned shl1_w = w + w;
  const unsigned sign = w & 0x80000000u;
  unsigned bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = Add(FloatOf((bias >> 1) + 0x07800000u), base);
  const unsigned bits = BitsOf(base);
  const unsigned exp_bits = (bits >> 13) & 0x00007C00u;
  const unsigned mantissa_bits = bits & 0x00000FFFu;
  const unsigned nonsign = exp_bits + mantissa_bits;
  const unsigned nan = 0x7E00u | ((w >> 13) & 0x3FFu);
  return ((sign >> 16) | (shl1_w > 0xFF000000u ? nan : nonsign)) & 0xFFFFu;
}

KVTIER_HD unsigned FloatToBf16(float f) {
  unsigned u = BitsOf(f);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return u >> 16;
}

// e4m3 as the fp16 with the same fields, times 2^8 (exact; 0x7F reads as 480).
KVTIER_HD float E4m3ToFloat(unsigned b) {
  return Mul(HalfToFloat(((b & 0x7Fu) << 7) | ((b & 0x80u) << 8)), 256.0f);
}

// Little-endian loads byte by byte: encoded blocks guarantee no alignment.
KVTIER_HD unsigned Le16(const unsigned char* p) { return p[0] | (unsigned{p[1]} << 8); }
KVTIER_HD unsigned Le32(const unsigned char* p) { return Le16(p) | (Le16(p + 2) << 16); }
KVTIER_HD float F32At(const unsigned char* p) { return FloatOf(Le32(p)); }

// Element i (block order) of a block whose payload (after the header) is at `in`, as fp32.
template <unsigned C>
KVTIER_HD float Value(const Shape& s, const unsigned char* in, u64 i) {
  const u64 slab = i / s.slab;
  const u64 j = i - slab * s.slab;  // index inside the slab: (t·H + h)·D + d
  const u64 layer = slab >> 1;
  const bool values = (slab & 1) != 0;
  if (C == kFp8) {
    const u64 h = (j / s.D) % s.H;
    return Mul(E4m3ToFloat(in[s.codesAt + i]), F32At(in + 4 * (slab * s.H + h)));
  } else if (C == kInt8) {
    u64 at;
    if (s.scales == kScalesToken) {
      at = slab * s.T * s.H + j / s.D;
    } else {
      const u64 hd = s.H * s.D;
      at = layer * (hd + s.T * s.H) + (values ? hd + j / s.D : j % hd);
    }
    const float q = static_cast<float>(static_cast<signed char>(in[s.codesAt + i]));
    return Mul(q, F32At(in + 4 * at));
  } else {
    const unsigned char* params = in + layer * s.layerGroups * 4;
    u64 g;
    if (values) {
      params += 4 * s.H * s.D;
      g = j / s.G;
    } else {
      g = j % (s.H * s.D);
    }
    const float scale = HalfToFloat(Le16(params + 4 * g));
    const float min = HalfToFloat(Le16(params + 4 * g + 2));
    const u64 bit = j * s.bits;
    const unsigned char byte = in[s.codesAt + slab * s.slabCodes + bit / 8];
    const unsigned q = (byte >> (bit % 8)) & ((1u << s.bits) - 1);
    return Add(min, Mul(static_cast<float>(q), scale));
  }
}

// Element i of block `b` of `blocks` consecutive encoded blocks at src, stored into dst's block b
// in the block's dtype.
template <unsigned C>
KVTIER_HD void DecodeElement(const Shape& s, const unsigned char* src, unsigned char* dst, u64 b,
                             u64 i) {
  const float v = Value<C>(s, src + b * s.encodedBytes + kHeaderBytes, i);
  unsigned char* out = dst + b * s.decodedBytes;
  if (s.dtype == kFp32) {
    const unsigned bits = BitsOf(v);
#if defined(__CUDA_ARCH__)
    *reinterpret_cast<unsigned*>(out + 4 * i) = bits;  // the launcher checks the alignment
#else
    __builtin_memcpy(out + 4 * i, &bits, 4);
#endif
  } else {
    const unsigned short h =
        static_cast<unsigned short>(s.dtype == kFp16 ? FloatToHalf(v) : FloatToBf16(v));
#if defined(__CUDA_ARCH__)
    *reinterpret_cast<unsigned short*>(out + 2 * i) = h;
#else
    __builtin_memcpy(out + 2 * i, &h, 2);
#endif
  }
}

}  // namespace gpucodec
}  // namespace kvtier
