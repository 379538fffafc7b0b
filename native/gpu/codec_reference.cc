#include "codec_reference.h"

#include <string>

#include "../codec/codec_js.h"
#include "../common/args.h"
#include "../common/errors.h"

namespace kvtier {

gpucodec::Shape GpuCodecShape(const codec::Params& p) {
  gpucodec::Shape s{};
  const uint64_t L = p.layers, T = p.tokens, H = p.heads, D = p.dim;
  s.codec = static_cast<unsigned>(p.codec);
  s.dtype = static_cast<unsigned>(p.dtype);
  s.scales = static_cast<unsigned>(p.scales);
  s.T = T;
  s.H = H;
  s.D = D;
  s.G = p.group;
  s.slab = T * H * D;
  s.elements = L * 2 * s.slab;
  switch (p.codec) {
    case codec::Codec::kFp8E4m3:
      s.codesAt = 4 * L * 2 * H;
      break;
    case codec::Codec::kInt8:
      s.codesAt = 4 * (p.scales == codec::Scales::kToken ? L * 2 * T * H : L * (H * D + T * H));
      break;
    default:
      s.bits = p.codec == codec::Codec::kKivi2 ? 2 : 4;
      s.layerGroups = H * D + T * H * (D / p.group);
      s.codesAt = 4 * L * s.layerGroups;
      s.slabCodes = (s.slab * s.bits + 7) / 8;
      break;
  }
  s.encodedBytes = codec::EncodedBytes(p);
  s.decodedBytes = codec::DecodedBytes(p);
  return s;
}

namespace {

template <unsigned C>
void DecodeAll(const gpucodec::Shape& s, const uint8_t* src, uint8_t* dst, uint64_t blocks) {
  for (uint64_t b = 0; b < blocks; b++) {
    for (uint64_t i = 0; i < s.elements; i++) gpucodec::DecodeElement<C>(s, src, dst, b, i);
  }
}

uint8_t* BytesOf(Napi::Env env, Napi::Value v, const char* what, size_t* length) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Throw(env, kBadArgument, std::string(what) + " must be a Uint8Array");
  }
  Napi::TypedArray view = v.As<Napi::TypedArray>();
  Napi::ArrayBuffer ab = view.ArrayBuffer();
  if (ab.IsDetached()) Throw(env, kBadArgument, std::string(what) + " is detached");
  *length = view.ByteLength();
  return static_cast<uint8_t*>(ab.Data()) + view.ByteOffset();
}

}  // namespace

Napi::Value GpuCodecReferenceJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const codec::Params p = CodecParamsArg(env, info[0]);
  size_t src_len = 0, dst_len = 0;
  const uint8_t* src = BytesOf(env, info[1], "src", &src_len);
  uint8_t* dst = BytesOf(env, info[2], "dst", &dst_len);
  const uint64_t blocks = ByteCountArg(env, info[3], "blocks");
  const gpucodec::Shape s = GpuCodecShape(p);
  CheckCodecSpans(env, src, src_len, s.encodedBytes, dst, dst_len, s.decodedBytes, blocks);
  for (uint64_t b = 0; b < blocks; b++) {
    if (const char* why = codec::CheckHeader(p, src + b * s.encodedBytes)) {
      Throw(env, kBadArgument, "block " + std::to_string(b) + ": " + why);
    }
  }
  switch (p.codec) {
    case codec::Codec::kFp8E4m3:
      DecodeAll<gpucodec::kFp8>(s, src, dst, blocks);
      break;
    case codec::Codec::kInt8:
      DecodeAll<gpucodec::kInt8>(s, src, dst, blocks);
      break;
    default:
      DecodeAll<gpucodec::kKivi2>(s, src, dst, blocks);
      break;
  }
  return env.Undefined();
}

}  // namespace kvtier
