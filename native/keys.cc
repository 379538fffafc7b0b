#include "keys.h"

#include <openssl/sha.h>

#include <cstring>

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

}  // namespace

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
