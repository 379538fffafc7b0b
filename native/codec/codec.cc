#include "codec.h"

#include <cmath>
#include <cstring>
#include <initializer_list>

#include "convert.h"
#include "encode_rows.h"
#include "rows.h"

namespace kvtier::codec {

namespace {

constexpr uint8_t kMagic[4] = {'K', 'V', 'T', 'C'};
constexpr float kFp8Max = 448.0f;

size_t DtypeBytes(Dtype d) { return d == Dtype::kFp32 ? 4 : 2; }

bool KnownDtype(Dtype d) { return d == Dtype::kFp16 || d == Dtype::kBf16 || d == Dtype::kFp32; }

bool IsKivi(Codec c) { return c == Codec::kKivi2 || c == Codec::kKivi4; }

unsigned KiviBits(Codec c) { return c == Codec::kKivi2 ? 2 : 4; }

void PutU32(uint8_t* out, uint32_t v) {
  for (int i = 0; i < 4; i++) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint32_t GetU32(const uint8_t* in) {
  return uint32_t{in[0]} | uint32_t{in[1]} << 8 | uint32_t{in[2]} << 16 | uint32_t{in[3]} << 24;
}

void PutF32(uint8_t* out, float f) { PutU32(out, Bits(f)); }
float GetF32(const uint8_t* in) { return FromBits(GetU32(in)); }

// Shape helpers: a slab is one layer's K or V, [tokens][heads][dim].
struct Shape {
  uint64_t L, T, H, D, G;
  uint64_t slab() const { return T * H * D; }
};

Shape ShapeOf(const Params& p) { return {p.layers, p.tokens, p.heads, p.dim, p.group}; }

// Scale counts (fp32 each) of fp8 and int8; kivi parameter pairs (two fp16 each).
uint64_t ScaleCount(const Params& p) {
  Shape s = ShapeOf(p);
  switch (p.codec) {
    case Codec::kFp8E4m3:
      return s.L * 2 * s.H;
    case Codec::kInt8:
      return p.scales == Scales::kToken ? s.L * 2 * s.T * s.H : s.L * (s.H * s.D + s.T * s.H);
    default:
      return 0;
  }
}

// kivi: per layer, keys have H*D groups (one per channel, over the block's tokens) and values
// T*H*(D/G) groups (G channels of one token and head).
uint64_t KiviKeyGroups(const Shape& s) { return s.H * s.D; }
uint64_t KiviValueGroups(const Shape& s) { return s.T * s.H * (s.D / s.G); }
uint64_t KiviSlabCodeBytes(const Shape& s, unsigned bits) { return (s.slab() * bits + 7) / 8; }

uint64_t PayloadBytes(const Params& p) {
  Shape s = ShapeOf(p);
  if (IsKivi(p.codec)) {
    uint64_t groups = s.L * (KiviKeyGroups(s) + KiviValueGroups(s));
    return groups * 4 + s.L * 2 * KiviSlabCodeBytes(s, KiviBits(p.codec));
  }
  return ScaleCount(p) * 4 + s.L * 2 * s.slab();
}

// --- fp8
// ------------------------------------------------------------------------------------------

const char* EncodeFp8(const Params& p, const uint8_t* src, uint8_t* out, const EncodeKernels& k) {
  Shape s = ShapeOf(p);
  const size_t ib = DtypeBytes(p.dtype);
  uint8_t* scales = out;
  uint8_t* codes = out + ScaleCount(p) * 4;
  for (uint64_t slab = 0; slab < s.L * 2; slab++) {
    for (uint64_t h = 0; h < s.H; h++) {
      // The (slab, head): T rows of D values, H·D apart.
      const uint64_t first = slab * s.slab() + h * s.D;
      float amax;
      if (!k.amax(src + first * ib, s.D, s.T, s.H * s.D, &amax)) {
        return "a value to encode is not finite";
      }
      const float scale = amax > 0 ? amax / kFp8Max : 1.0f;
      PutF32(scales + 4 * (slab * s.H + h), scale);
      k.fp8(src + first * ib, s.D, s.T, s.H * s.D, scale, codes + first);
    }
  }
  return nullptr;
}

void DecodeFp8(const Params& p, const uint8_t* in, uint8_t* dst, const RowKernels& k) {
  Shape s = ShapeOf(p);
  const uint8_t* codes = in + ScaleCount(p) * 4;
  const size_t ob = DtypeBytes(p.dtype);
  for (uint64_t slab = 0; slab < s.L * 2; slab++) {
    for (uint64_t t = 0; t < s.T; t++) {
      for (uint64_t h = 0; h < s.H; h++) {
        const uint64_t row = slab * s.slab() + (t * s.H + h) * s.D;
        k.fp8(codes + row, s.D, GetF32(in + 4 * (slab * s.H + h)), dst + row * ob);
      }
    }
  }
}

// --- int8
// ----------------------------------------------------------------------------------------- Scales
// per layer: keys [H][D] (per channel) then values [T][H] (per token) with kKivi; with kToken both
// slabs [T][H].

float Int8Scale(float amax) { return amax > 0 ? amax / 127.0f : 1.0f; }

const char* EncodeInt8(const Params& p, const uint8_t* src, uint8_t* out, const EncodeKernels& k) {
  Shape s = ShapeOf(p);
  const size_t ib = DtypeBytes(p.dtype);
  uint8_t* scales = out;
  uint8_t* codes = out + ScaleCount(p) * 4;
  constexpr uint64_t kChunk = 1024;  // channels whose scales are computed together
  float channel[kChunk];
  uint64_t next_scale = 0;
  for (uint64_t slab = 0; slab < s.L * 2; slab++) {
    const uint64_t base = slab * s.slab();
    if (p.scales == Scales::kKivi && slab % 2 == 0) {
      for (uint64_t h = 0; h < s.H; h++) {
        for (uint64_t d0 = 0; d0 < s.D; d0 += kChunk) {
          const uint64_t n = s.D - d0 < kChunk ? s.D - d0 : kChunk;
          const uint64_t first = base + h * s.D + d0;
          if (!k.column_amax(src + first * ib, n, s.T, s.H * s.D, channel)) {
            return "a value to encode is not finite";
          }
          for (uint64_t i = 0; i < n; i++) {
            channel[i] = Int8Scale(channel[i]);
            PutF32(scales + 4 * (next_scale + h * s.D + d0 + i), channel[i]);
          }
          k.int8(src + first * ib, n, s.T, s.H * s.D, 0, channel, codes + first);
        }
      }
      next_scale += s.H * s.D;
    } else {
      for (uint64_t r = 0; r < s.T * s.H; r++) {
        const uint64_t first = base + r * s.D;
        float amax;
        if (!k.amax(src + first * ib, s.D, 1, 0, &amax)) return "a value to encode is not finite";
        const float scale = Int8Scale(amax);
        PutF32(scales + 4 * (next_scale + r), scale);
        k.int8(src + first * ib, s.D, 1, 0, scale, nullptr, codes + first);
      }
      next_scale += s.T * s.H;
    }
  }
  return nullptr;
}

void DecodeInt8(const Params& p, const uint8_t* in, uint8_t* dst, const RowKernels& k) {
  Shape s = ShapeOf(p);
  const uint8_t* codes = in + ScaleCount(p) * 4;
  const size_t ob = DtypeBytes(p.dtype);
  // The per-channel scales are read into an aligned-enough local copy once per slab: the encoded
  // block gives no alignment guarantee for floats.
  float channel[4096];
  const bool fits = s.H * s.D <= 4096;
  uint64_t next_scale = 0;
  for (uint64_t slab = 0; slab < s.L * 2; slab++) {
    const uint64_t base = slab * s.slab();
    if (p.scales == Scales::kKivi && slab % 2 == 0) {
      const uint8_t* sc = in + 4 * next_scale;
      if (fits) std::memcpy(channel, sc, 4 * s.H * s.D);
      for (uint64_t t = 0; t < s.T; t++) {
        for (uint64_t h = 0; h < s.H; h++) {
          const uint64_t row = base + (t * s.H + h) * s.D;
          if (fits) {
            k.int8(codes + row, s.D, 0, channel + h * s.D, dst + row * ob);
          } else {
            for (uint64_t d = 0; d < s.D; d++) {
              k.int8(codes + row + d, 1, GetF32(sc + 4 * (h * s.D + d)), nullptr,
                     dst + (row + d) * ob);
            }
          }
        }
      }
      next_scale += s.H * s.D;
    } else {
      for (uint64_t r = 0; r < s.T * s.H; r++) {
        k.int8(codes + base + r * s.D, s.D, GetF32(in + 4 * (next_scale + r)), nullptr,
               dst + (base + r * s.D) * ob);
      }
      next_scale += s.T * s.H;
    }
  }
}

// --- kivi
// ----------------------------------------------------------------------------------------- Per
// layer: key groups' (scale, min) as fp16 pairs [H][D], value groups' [T][H][D/G]; after all
// layers' parameters, the codes: per slab a little-endian bit stream of `bits`-bit codes in block
// order, padded to a byte.

struct Group {
  uint16_t scale, min;
};

// Chooses fp16 parameters so that min + q * scale covers [lo, hi] for q in [0, levels].
const char* KiviParams(float lo, float hi, unsigned levels, Group* g) {
  if (std::fabs(lo) > 65504.0f || std::fabs(hi) > 65504.0f) {
    return "kivi keeps group parameters in fp16: a value beyond +-65504 cannot be encoded";
  }
  g->min = FloatToHalfInline(lo);
  const float mn = HalfToFloatInline(g->min);
  const float range = hi - mn;
  g->scale = range > 0 ? FloatToHalfInline(range / static_cast<float>(levels)) : 0;
  if (range > 0) {
    // Round the scale up until the top level reaches hi (a few fp16 ulps at most).
    while (HalfToFloatInline(g->scale) * static_cast<float>(levels) + mn < hi) g->scale++;
  }
  return nullptr;
}

void PutGroup(uint8_t* at, const Group& g) {
  std::memcpy(at, &g.scale, 2);
  std::memcpy(at + 2, &g.min, 2);
}

const char* EncodeKivi(const Params& p, const uint8_t* src, uint8_t* out, const EncodeKernels& k) {
  Shape s = ShapeOf(p);
  const size_t ib = DtypeBytes(p.dtype);
  const unsigned bits = KiviBits(p.codec);
  const unsigned levels = (1u << bits) - 1;
  const uint64_t layer_groups = KiviKeyGroups(s) + KiviValueGroups(s);
  uint8_t* codes_base = out + s.L * layer_groups * 4;
  const uint64_t slab_codes = KiviSlabCodeBytes(s, bits);
  std::memset(codes_base, 0, s.L * 2 * slab_codes);
  // Ranges and parameters a chunk of groups at a time; the parameters as fp32 for quantizing.
  constexpr uint64_t kChunk = 1024;
  float lo[kChunk], hi[kChunk], scales[kChunk], mins[kChunk];
  // One group's parameters, checked and stored; errors in group order, as documented.
  auto params_of = [&](float l, float h, uint8_t* at, uint64_t j) -> const char* {
    Group g;
    if (const char* why = KiviParams(l, h, levels, &g)) return why;
    PutGroup(at, g);
    scales[j] = HalfToFloatInline(g.scale);
    mins[j] = HalfToFloatInline(g.min);
    return nullptr;
  };
  for (uint64_t l = 0; l < s.L; l++) {
    uint8_t* params = out + l * layer_groups * 4;
    // Keys: one group per (head, channel) over the block's tokens (T rows, H·D apart).
    const uint8_t* ksrc = src + (l * 2) * s.slab() * ib;
    uint8_t* kcodes = codes_base + (l * 2) * slab_codes;
    for (uint64_t h = 0; h < s.H; h++) {
      for (uint64_t d0 = 0; d0 < s.D; d0 += kChunk) {
        const uint64_t n = s.D - d0 < kChunk ? s.D - d0 : kChunk;
        const uint64_t first = h * s.D + d0;
        const size_t bad = k.kivi_column_range(ksrc + first * ib, n, s.T, s.H * s.D, lo, hi);
        for (uint64_t j = 0; j < n; j++) {
          if (j == bad) return "a value to encode is not finite";
          if (const char* why = params_of(lo[j], hi[j], params + 4 * (first + j), j)) return why;
        }
        k.kivi(ksrc + first * ib, n, s.T, s.H * s.D, bits, scales, mins, 1, kcodes, first);
      }
    }
    // Values: one group per G consecutive elements (token, head, G channels).
    const uint8_t* vsrc = src + (l * 2 + 1) * s.slab() * ib;
    uint8_t* vcodes = codes_base + (l * 2 + 1) * slab_codes;
    uint8_t* vparams = params + 4 * KiviKeyGroups(s);
    const uint64_t groups = KiviValueGroups(s);
    const uint64_t per_call = s.G < kChunk ? kChunk / s.G : 1;
    for (uint64_t g0 = 0; g0 < groups; g0 += per_call) {
      const uint64_t count = groups - g0 < per_call ? groups - g0 : per_call;
      for (uint64_t j = 0; j < count; j++) {
        const uint64_t first = (g0 + j) * s.G;
        float l0, h0;
        if (!k.kivi_range(vsrc + first * ib, s.G, &l0, &h0)) {
          return "a value to encode is not finite";
        }
        if (const char* why = params_of(l0, h0, vparams + 4 * (g0 + j), j)) return why;
      }
      k.kivi(vsrc + g0 * s.G * ib, count * s.G, 1, 0, bits, scales, mins, s.G, vcodes, g0 * s.G);
    }
  }
  return nullptr;
}

void DecodeKivi(const Params& p, const uint8_t* in, uint8_t* dst, const RowKernels& k) {
  Shape s = ShapeOf(p);
  const unsigned bits = KiviBits(p.codec);
  const uint64_t layer_groups = KiviKeyGroups(s) + KiviValueGroups(s);
  const uint8_t* codes_base = in + s.L * layer_groups * 4;
  const uint64_t slab_codes = KiviSlabCodeBytes(s, bits);
  const size_t ob = DtypeBytes(p.dtype);
  // Group parameters are converted to fp32 once per chunk of groups, then reused by every row.
  constexpr uint64_t kChunk = 1024;
  float scales[kChunk], mins[kChunk];
  for (uint64_t l = 0; l < s.L; l++) {
    const uint8_t* params = in + l * layer_groups * 4;
    // Keys: a (scale, min) per (head, channel), shared by the block's tokens.
    const uint8_t* kcodes = codes_base + (l * 2) * slab_codes;
    uint8_t* kout = dst + (l * 2) * s.slab() * ob;
    for (uint64_t h = 0; h < s.H; h++) {
      for (uint64_t d0 = 0; d0 < s.D; d0 += kChunk) {
        const uint64_t n = s.D - d0 < kChunk ? s.D - d0 : kChunk;
        k.kivi_params(params + 4 * (h * s.D + d0), n, scales, mins);
        for (uint64_t t = 0; t < s.T; t++) {
          const uint64_t first = (t * s.H + h) * s.D + d0;
          k.kivi(kcodes, first, n, bits, scales, mins, 1, kout + first * ob);
        }
      }
    }
    // Values: a (scale, min) per G consecutive elements, in block order.
    const uint8_t* vparams = params + 4 * KiviKeyGroups(s);
    const uint8_t* vcodes = codes_base + (l * 2 + 1) * slab_codes;
    uint8_t* vout = dst + (l * 2 + 1) * s.slab() * ob;
    const uint64_t groups = KiviValueGroups(s);
    const uint64_t per_call = s.G < kChunk ? kChunk / s.G : 1;
    for (uint64_t g0 = 0; g0 < groups; g0 += per_call) {
      const uint64_t count = groups - g0 < per_call ? groups - g0 : per_call;
      k.kivi_params(vparams + 4 * g0, count, scales, mins);
      k.kivi(vcodes, g0 * s.G, count * s.G, bits, scales, mins, s.G, vout + g0 * s.G * ob);
    }
  }
}

}  // namespace

uint16_t FloatToHalf(float f) { return FloatToHalfInline(f); }
float HalfToFloat(uint16_t h) { return HalfToFloatInline(h); }
uint16_t FloatToBf16(float f) { return FloatToBf16Inline(f); }
float E4m3ToFloat(uint8_t b) { return E4m3ToFloatInline(b); }

uint8_t FloatToE4m3(float f) { return FloatToE4m3Inline(f); }

Isa BestIsa() { return CpuHasAvx2() ? Isa::kAvx2 : Isa::kScalar; }

const char* IsaName(Isa isa) { return isa == Isa::kAvx2 ? "avx2" : "scalar"; }

const char* CheckParams(const Params& p) {
  if (p.codec != Codec::kFp8E4m3 && p.codec != Codec::kInt8 && !IsKivi(p.codec)) {
    return "unknown codec";
  }
  if (!KnownDtype(p.dtype)) return "the codecs encode fp16, bf16 and fp32 KV only";
  for (uint32_t v : {p.layers, p.tokens, p.heads, p.dim}) {
    if (v == 0 || v > kMaxDim) return "layers, tokens, heads and dim must be 1 to 2^20";
  }
  if (static_cast<uint64_t>(p.layers) * 2 * p.tokens * p.heads * p.dim > (uint64_t{1} << 40)) {
    return "the block is too large";
  }
  if (IsKivi(p.codec)) {
    if (p.group == 0 || p.dim % p.group != 0)
      return "the group size must divide the head dimension";
    if (p.scales != Scales::kNone) return "kivi takes no scales option";
  } else {
    if (p.group != 0) return "only kivi takes a group size";
    if (p.codec == Codec::kInt8) {
      if (p.scales != Scales::kToken && p.scales != Scales::kKivi)
        return "int8 needs a scale layout";
    } else if (p.scales != Scales::kNone) {
      return "fp8-e4m3 takes no scales option";
    }
  }
  return nullptr;
}

uint64_t DecodedBytes(const Params& p) {
  return ShapeOf(p).L * 2 * ShapeOf(p).slab() * DtypeBytes(p.dtype);
}

uint64_t EncodedBytes(const Params& p) { return kHeaderBytes + PayloadBytes(p); }

void WriteHeader(const Params& p, uint8_t* out) {
  std::memset(out, 0, kHeaderBytes);
  std::memcpy(out, kMagic, 4);
  out[4] = kVersion;
  out[5] = static_cast<uint8_t>(p.codec);
  out[6] = static_cast<uint8_t>(p.dtype);
  out[7] = static_cast<uint8_t>(p.scales);
  PutU32(out + 8, p.layers);
  PutU32(out + 12, p.tokens);
  PutU32(out + 16, p.heads);
  PutU32(out + 20, p.dim);
  PutU32(out + 24, p.group);
  // Payload bytes: at most 2^43, so it always fits 32 bits only for small blocks; kept modulo
  // 2^32 as a cross-check of the shape, which determines it.
  PutU32(out + 28, static_cast<uint32_t>(PayloadBytes(p)));
}

const char* ReadHeader(const uint8_t* in, size_t len, Params* p) {
  if (len < kHeaderBytes) return "the encoded block is shorter than its header";
  if (std::memcmp(in, kMagic, 4) != 0) return "not an encoded KV block (no KVTC magic)";
  if (in[4] != kVersion) return "an encoded KV block of an unknown codec format version";
  Params q;
  q.codec = static_cast<Codec>(in[5]);
  q.dtype = static_cast<Dtype>(in[6]);
  q.scales = static_cast<Scales>(in[7]);
  q.layers = GetU32(in + 8);
  q.tokens = GetU32(in + 12);
  q.heads = GetU32(in + 16);
  q.dim = GetU32(in + 20);
  q.group = GetU32(in + 24);
  if (const char* why = CheckParams(q)) return why;
  if (GetU32(in + 28) != static_cast<uint32_t>(PayloadBytes(q))) {
    return "the encoded block's payload length does not match its shape";
  }
  *p = q;
  return nullptr;
}

const char* Encode(const Params& p, const uint8_t* src, uint8_t* dst, Isa isa) {
  if (const char* why = CheckParams(p)) return why;
  WriteHeader(p, dst);
  uint8_t* out = dst + kHeaderBytes;
  const EncodeKernels* k = &ScalarEncoders(p.dtype);
  if (isa == Isa::kAvx2 && Avx2Encoders(p.dtype) != nullptr) k = Avx2Encoders(p.dtype);
  switch (p.codec) {
    case Codec::kFp8E4m3:
      return EncodeFp8(p, src, out, *k);
    case Codec::kInt8:
      return EncodeInt8(p, src, out, *k);
    default:
      return EncodeKivi(p, src, out, *k);
  }
}

const char* CheckHeader(const Params& p, const uint8_t* src) {
  uint8_t expect[kHeaderBytes];
  WriteHeader(p, expect);
  if (std::memcmp(src, expect, kHeaderBytes) == 0) return nullptr;
  Params got;
  if (const char* why = ReadHeader(src, kHeaderBytes, &got)) return why;
  return "the block was encoded with another codec, dtype or shape";
}

const char* Decode(const Params& p, const uint8_t* src, uint8_t* dst, Isa isa) {
  if (const char* why = CheckParams(p)) return why;
  if (const char* why = CheckHeader(p, src)) return why;
  const uint8_t* in = src + kHeaderBytes;
  const RowKernels* rows = &ScalarRows(p.dtype);
  if (isa == Isa::kAvx2 && CpuHasAvx2()) rows = Avx2Rows(p.dtype);
  switch (p.codec) {
    case Codec::kFp8E4m3:
      DecodeFp8(p, in, dst, *rows);
      break;
    case Codec::kInt8:
      DecodeInt8(p, in, dst, *rows);
      break;
    default:
      DecodeKivi(p, in, dst, *rows);
      break;
  }
  return nullptr;
}

}  // namespace kvtier::codec
