#include "keys.h"

#include <openssl/sha.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#include <cstring>
#include <memory>
#include <string>

#include "common/args.h"
#include "common/crc32c.h"
#include "common/errors.h"

namespace kvtier {

namespace {

constexpr size_t kKeyBytes = 32;

const uint8_t* ViewBytes(Napi::Env env, Napi::Value v, size_t* len, const char* what) {
  if (!v.IsTypedArray() && !v.IsDataView()) {
    Throw(env, kBadArgument, std::string(what) + " must be a TypedArray or DataView");
  }
  Napi::ArrayBuffer ab;
  size_t offset;
  if (v.IsTypedArray()) {
    Napi::TypedArray t = v.As<Napi::TypedArray>();
    ab = t.ArrayBuffer();
    offset = t.ByteOffset();
    *len = t.ByteLength();
  } else {
    Napi::DataView d = v.As<Napi::DataView>();
    ab = d.ArrayBuffer();
    offset = d.ByteOffset();
    *len = d.ByteLength();
  }
  if (ab.IsDetached()) Throw(env, kBadArgument, std::string(what) + " is detached");
  return static_cast<const uint8_t*>(ab.Data()) + offset;
}

// Lowercase hex of bytes[0, n) into out[0, 2n). Sixteen bytes a step with SSE2 (part of every
// x86-64) or NEON (every arm64): a 128k-token chain is 256 KiB of keys, and a byte-at-a-time
// table costs as much as hashing them.
void EncodeHex(const uint8_t* bytes, size_t n, char* out) {
  size_t i = 0;
#if defined(__SSE2__)
  const __m128i mask = _mm_set1_epi8(0x0f);
  const __m128i nine = _mm_set1_epi8(9);
  const __m128i zero = _mm_set1_epi8('0');
  const __m128i gap = _mm_set1_epi8('a' - '0' - 10);
  // '0' + x, plus the gap between '9' and 'a' where x > 9.
  auto digits = [&](__m128i x) {
    return _mm_add_epi8(_mm_add_epi8(x, zero), _mm_and_si128(_mm_cmpgt_epi8(x, nine), gap));
  };
  for (; i + 16 <= n; i += 16) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + i));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    __m128i lo = _mm_and_si128(v, mask);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i), digits(_mm_unpacklo_epi8(hi, lo)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i + 16),
                     digits(_mm_unpackhi_epi8(hi, lo)));
  }
#elif defined(__ARM_NEON)
  const uint8x16_t table = vld1q_u8(reinterpret_cast<const uint8_t*>("0123456789abcdef"));
  for (; i + 16 <= n; i += 16) {
    uint8x16_t v = vld1q_u8(bytes + i);
    uint8x16x2_t pair = {
        {vqtbl1q_u8(table, vshrq_n_u8(v, 4)), vqtbl1q_u8(table, vandq_u8(v, vdupq_n_u8(0x0f)))}};
    vst2q_u8(reinterpret_cast<uint8_t*>(out + 2 * i), pair);
  }
#endif
  static constexpr char kDigits[] = "0123456789abcdef";
  for (; i < n; ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 15];
  }
}

}  // namespace

Napi::Value HexJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t len = 0;
  const uint8_t* p = ViewBytes(env, info[0], &len, "bytes");
  uint64_t start = info[1].IsUndefined() ? 0 : ByteCountArg(env, info[1], "start");
  uint64_t end = info[2].IsUndefined() ? len : ByteCountArg(env, info[2], "end");
  if (start > end || end > len) {
    Throw(env, kBadArgument,
          "hex: [" + std::to_string(start) + ", " + std::to_string(end) + ") is outside the " +
              std::to_string(len) + " bytes");
  }
  size_t n = end - start;
  // Small pieces (callers cut long chains into them) are encoded on the stack and copied into a
  // string in the young generation, memory the heap already has: a half-megabyte string, or
  // one outside the heap, costs more in page faults than the encoding itself.
  constexpr size_t kStack = 4096;
  char stack[2 * kStack];
  std::unique_ptr<char[]> heap;
  char* out = stack;
  if (n > kStack) {
    heap.reset(new char[2 * n]);
    out = heap.get();
  }
  EncodeHex(p + start, n, out);
  napi_value result = nullptr;
  NAPI_THROW_IF_FAILED(env, napi_create_string_latin1(env, out, 2 * n, &result), Napi::Value());
  return Napi::Value(env, result);
}

Napi::Value ChainHash(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    Throw(env, kBadArgument, "tokens must be a Uint32Array");
  }
  Napi::Uint32Array tokens = info[0].As<Napi::Uint32Array>();
  uint64_t blockTokens = ByteCountArg(env, info[1], "blockTokens");
  if (blockTokens == 0 || blockTokens > (1u << 20)) {
    Throw(env, kBadArgument, "blockTokens must be between 1 and 1048576");
  }
  size_t rootLen = 0;
  const uint8_t* root = ViewBytes(env, info[2], &rootLen, "root");
  if (rootLen != kKeyBytes) Throw(env, kBadArgument, "root must be 32 bytes");
  if (tokens.ArrayBuffer().IsDetached()) Throw(env, kBadArgument, "tokens are detached");

  size_t blocks = tokens.ElementLength() / blockTokens;
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, blocks * kKeyBytes);
  const uint8_t* parent = root;
  const auto* data = reinterpret_cast<const uint8_t*>(tokens.Data());
  size_t blockBytes = blockTokens * sizeof(uint32_t);
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "keys hash tokens as little-endian");
  for (size_t i = 0; i < blocks; ++i) {
    SHA256_CTX ctx;
    // The one-shot SHA256_* calls are deprecated in OpenSSL 3 in favour of EVP, whose per-call
    // fetch costs more than hashing a 64-byte block; Node ships and exports both.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, parent, kKeyBytes);
    SHA256_Update(&ctx, data + i * blockBytes, blockBytes);
    SHA256_Final(out.Data() + i * kKeyBytes, &ctx);
#pragma GCC diagnostic pop
    parent = out.Data() + i * kKeyBytes;
  }
  return out;
}

Napi::Value Crc32cJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t len = 0;
  const uint8_t* p = ViewBytes(env, info[0], &len, "data");
  uint32_t seed = info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 0;
  return Napi::Number::New(env, Crc32c(seed, p, len));
}

}  // namespace kvtier
