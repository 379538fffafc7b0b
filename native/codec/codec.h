// KV block codecs (docs/codecs.md): fp8-e4m3, int8, kivi2 and kivi4 over one packed kvtier block
// (NHD packing, docs/layouts.md). Pure code over byte buffers: no N-API, no I/O, no allocation
// that outlives a call, so tests and a fuzzer can drive it directly.
//
// Every encoded block starts with a 32-byte header naming the codec, its version, the source
// dtype and the shape, so a decode with other parameters is refused instead of producing a wrong
// block. Decoding is bit-identical on every machine: scalar and SIMD paths perform the same IEEE
// single-precision operations (no fused multiply-add) and the same round-to-nearest-even.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kvtier::codec {

inline constexpr size_t kHeaderBytes = 32;
inline constexpr uint8_t kVersion = 1;
inline constexpr uint32_t kMaxDim = 1u << 20;  // any one size; keeps every product in 64 bits

enum class Codec : uint8_t { kFp8E4m3 = 1, kInt8 = 2, kKivi2 = 3, kKivi4 = 4 };
enum class Dtype : uint8_t { kFp16 = 1, kBf16 = 2, kFp32 = 3 };
// int8 only: how the scales are laid out.
enum class Scales : uint8_t { kNone = 0, kToken = 1, kKivi = 2 };

struct Params {
  Codec codec = Codec::kFp8E4m3;
  Dtype dtype = Dtype::kFp16;
  uint32_t layers = 0;
  uint32_t tokens = 0;            // blockTokens
  uint32_t heads = 0;             // kvHeads
  uint32_t dim = 0;               // headDim
  uint32_t group = 0;             // kivi: channels per value group (divides dim); 0 for the others
  Scales scales = Scales::kNone;  // int8: kToken or kKivi; kNone for the others
};

enum class Isa : uint8_t { kScalar = 0, kAvx2 = 1 };

// The fastest encode and decode path this CPU has (kAvx2 needs AVX2 and F16C).
Isa BestIsa();
const char* IsaName(Isa isa);

// nullptr when the parameters describe a block the codec can encode; else why not.
const char* CheckParams(const Params& p);
// Bytes of one decoded (packed) block, and of one encoded block, header included. Both assume
// CheckParams(p) passed.
uint64_t DecodedBytes(const Params& p);
uint64_t EncodedBytes(const Params& p);

// Writes the header for p into out[0, kHeaderBytes).
void WriteHeader(const Params& p, uint8_t* out);
// Reads a header; nullptr and *p filled when it is one this version writes, else why not.
const char* ReadHeader(const uint8_t* in, size_t len, Params* p);

// Encodes one block: src holds DecodedBytes(p) bytes, dst EncodedBytes(p). nullptr on success;
// else why not (a non-finite value, or a value kivi's fp16 group parameters cannot hold), and dst
// is unspecified. Every isa writes the same bytes; kScalar is the portable reference.
const char* Encode(const Params& p, const uint8_t* src, uint8_t* dst, Isa isa);

// nullptr when the block's header is the one p writes; else why not (the header's own defect if it
// is not a header at all, else that another codec, dtype or shape wrote it). Batches check every
// block with it before decoding any, so a refused batch leaves the destination as it was.
const char* CheckHeader(const Params& p, const uint8_t* src);

// Decodes one block of EncodedBytes(p) bytes into DecodedBytes(p) bytes. Refused (a message,
// dst untouched) unless the block's header equals the header of p.
const char* Decode(const Params& p, const uint8_t* src, uint8_t* dst, Isa isa);

// Conversions, exposed for tests: fp32 to fp16 and bf16 with round-to-nearest-even, fp16 to fp32,
// and fp32 to e4m3 (saturating at +-448, round-to-nearest-even) and back.
uint16_t FloatToHalf(float f);
float HalfToFloat(uint16_t h);
uint16_t FloatToBf16(float f);
uint8_t FloatToE4m3(float f);
float E4m3ToFloat(uint8_t b);

}  // namespace kvtier::codec
