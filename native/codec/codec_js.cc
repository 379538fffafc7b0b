#include "codec_js.h"

#include <string>

#include "../common/args.h"
#include "../common/errors.h"
#include "codec.h"
#include "codec_pool.h"

namespace kvtier {

namespace {

using codec::Codec;
using codec::Dtype;
using codec::Params;
using codec::Scales;

uint32_t SizeField(Napi::Object o, const char* key) {
  uint64_t v = ByteCountArg(o.Env(), o.Get(key), key);
  if (v > UINT32_MAX) Throw(o.Env(), kBadArgument, std::string(key) + " is too large");
  return static_cast<uint32_t>(v);
}

}  // namespace

Params CodecParamsArg(Napi::Env env, Napi::Value v) {
  if (!v.IsObject()) Throw(env, kBadArgument, "codec parameters must be an object");
  Napi::Object o = v.As<Napi::Object>();
  Params p;
  std::string name = StringOption(o, "codec", "");
  if (name == "fp8-e4m3")
    p.codec = Codec::kFp8E4m3;
  else if (name == "int8")
    p.codec = Codec::kInt8;
  else if (name == "kivi2")
    p.codec = Codec::kKivi2;
  else if (name == "kivi4")
    p.codec = Codec::kKivi4;
  else
    Throw(env, kBadArgument, "unknown codec '" + name + "'");
  std::string dtype = StringOption(o, "dtype", "");
  if (dtype == "fp16")
    p.dtype = Dtype::kFp16;
  else if (dtype == "bf16")
    p.dtype = Dtype::kBf16;
  else if (dtype == "fp32")
    p.dtype = Dtype::kFp32;
  else
    Throw(env, kBadArgument, "codec " + name + " cannot encode dtype '" + dtype + "'");
  p.layers = SizeField(o, "layers");
  p.tokens = SizeField(o, "tokens");
  p.heads = SizeField(o, "heads");
  p.dim = SizeField(o, "dim");
  p.group = SizeField(o, "group");
  std::string scales = StringOption(o, "scales", "none");
  if (scales == "none")
    p.scales = Scales::kNone;
  else if (scales == "token")
    p.scales = Scales::kToken;
  else if (scales == "kivi")
    p.scales = Scales::kKivi;
  else
    Throw(env, kBadArgument, "unknown scales '" + scales + "'");
  if (const char* why = codec::CheckParams(p))
    Throw(env, kBadArgument, "codec " + name + ": " + why);
  return p;
}

codec::Isa CodecIsaArg(Napi::Env env, Napi::Value v) {
  if (v.IsUndefined()) return codec::BestIsa();
  std::string name = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (name == "scalar") return codec::Isa::kScalar;
  if (name != "auto") Throw(env, kBadArgument, "isa must be 'scalar' or 'auto'");
  return codec::BestIsa();
}

void CheckCodecSpans(Napi::Env env, const uint8_t* src, size_t src_len, uint64_t src_block,
                     const uint8_t* dst, size_t dst_len, uint64_t dst_block, uint64_t blocks) {
  if (src_len / src_block < blocks) {
    Throw(env, kBadArgument,
          "src holds " + std::to_string(src_len) + " bytes, less than " + std::to_string(blocks) +
              " blocks of " + std::to_string(src_block));
  }
  if (dst_len / dst_block < blocks) {
    Throw(env, kBadArgument,
          "dst holds " + std::to_string(dst_len) + " bytes, less than " + std::to_string(blocks) +
              " blocks of " + std::to_string(dst_block));
  }
  const uint8_t* s_end = src + src_block * blocks;
  const uint8_t* d_end = dst + dst_block * blocks;
  if (blocks > 0 && src < d_end && dst < s_end) {
    Throw(env, kBadArgument, "src and dst overlap");
  }
}

namespace {

struct Bytes {
  uint8_t* data;
  size_t length;
};

Bytes BytesArg(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Throw(env, kBadArgument, std::string(what) + " must be a Uint8Array");
  }
  Napi::TypedArray view = v.As<Napi::TypedArray>();
  Napi::ArrayBuffer ab = view.ArrayBuffer();
  if (ab.IsDetached()) Throw(env, kBadArgument, std::string(what) + " is detached");
  return {static_cast<uint8_t*>(ab.Data()) + view.ByteOffset(), view.ByteLength()};
}

void CheckSpans(Napi::Env env, const Bytes& src, uint64_t src_block, const Bytes& dst,
                uint64_t dst_block, uint64_t blocks) {
  CheckCodecSpans(env, src.data, src.length, src_block, dst.data, dst.length, dst_block, blocks);
}

Napi::Value Encode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = CodecParamsArg(env, info[0]);
  Bytes src = BytesArg(env, info[1], "src");
  Bytes dst = BytesArg(env, info[2], "dst");
  uint64_t blocks = ByteCountArg(env, info[3], "blocks");
  const codec::Isa isa = CodecIsaArg(env, info[4]);
  const uint64_t in = codec::DecodedBytes(p), out = codec::EncodedBytes(p);
  CheckSpans(env, src, in, dst, out, blocks);
  for (uint64_t b = 0; b < blocks; b++) {
    if (const char* why = codec::Encode(p, src.data + b * in, dst.data + b * out, isa)) {
      Throw(env, kBadArgument, "block " + std::to_string(b) + ": " + why);
    }
  }
  return env.Undefined();
}

Napi::Value Decode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = CodecParamsArg(env, info[0]);
  Bytes src = BytesArg(env, info[1], "src");
  Bytes dst = BytesArg(env, info[2], "dst");
  uint64_t blocks = ByteCountArg(env, info[3], "blocks");
  const codec::Isa isa = CodecIsaArg(env, info[4]);
  const uint64_t in = codec::EncodedBytes(p), out = codec::DecodedBytes(p);
  CheckSpans(env, src, in, dst, out, blocks);
  // Every header first, so a refused batch leaves dst as it was.
  for (uint64_t b = 0; b < blocks; b++) {
    if (const char* why = codec::CheckHeader(p, src.data + b * in)) {
      Throw(env, kBadArgument, "block " + std::to_string(b) + ": " + why);
    }
  }
  for (uint64_t b = 0; b < blocks; b++) {
    if (const char* why = codec::Decode(p, src.data + b * in, dst.data + b * out, isa)) {
      Throw(env, kBadArgument, "block " + std::to_string(b) + ": " + why);
    }
  }
  return env.Undefined();
}

Napi::Value Sizes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = CodecParamsArg(env, info[0]);
  Napi::Object out = Napi::Object::New(env);
  out.Set("decodedBytes", static_cast<double>(codec::DecodedBytes(p)));
  out.Set("encodedBytes", static_cast<double>(codec::EncodedBytes(p)));
  return out;
}

Napi::Value ReadHeader(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes src = BytesArg(env, info[0], "src");
  Params p;
  if (const char* why = codec::ReadHeader(src.data, src.length, &p)) Throw(env, kBadArgument, why);
  static const char* const kCodecs[] = {"", "fp8-e4m3", "int8", "kivi2", "kivi4"};
  static const char* const kDtypes[] = {"", "fp16", "bf16", "fp32"};
  static const char* const kScales[] = {"none", "token", "kivi"};
  Napi::Object o = Napi::Object::New(env);
  o.Set("codec", kCodecs[static_cast<int>(p.codec)]);
  o.Set("dtype", kDtypes[static_cast<int>(p.dtype)]);
  o.Set("layers", p.layers);
  o.Set("tokens", p.tokens);
  o.Set("heads", p.heads);
  o.Set("dim", p.dim);
  o.Set("group", p.group);
  o.Set("scales", kScales[static_cast<int>(p.scales)]);
  return o;
}

Napi::Value IsaJs(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), codec::IsaName(codec::BestIsa()));
}

}  // namespace

Napi::Object CodecExports(Napi::Env env, Napi::Object exports) {
  exports.Set("codecEncode", Napi::Function::New(env, Encode, "codecEncode"));
  exports.Set("codecDecode", Napi::Function::New(env, Decode, "codecDecode"));
  exports.Set("codecSizes", Napi::Function::New(env, Sizes, "codecSizes"));
  exports.Set("codecReadHeader", Napi::Function::New(env, ReadHeader, "codecReadHeader"));
  exports.Set("codecIsa", Napi::Function::New(env, IsaJs, "codecIsa"));
  exports.Set("NativeCodecPool", CodecPool::Define(env));
  return exports;
}

}  // namespace kvtier
