#include "slot_header_js.h"

#include <cstring>
#include <string>
#include <vector>

#include "../common/args.h"
#include "../common/errors.h"
#include "slot_header.h"

namespace kvtier {

Napi::Value DecodeSlotHeadersJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray()) Throw(env, kBadArgument, "data must be a Uint8Array");
  Napi::TypedArray view = info[0].As<Napi::TypedArray>();
  if (view.TypedArrayType() != napi_uint8_array) {
    Throw(env, kBadArgument, "data must be a Uint8Array");
  }
  uint64_t header_bytes = ByteCountArg(env, info[1], "headerBytes");
  uint64_t block_bytes = ByteCountArg(env, info[2], "blockBytes");
  if (header_bytes < kSlotHeaderMin) {
    Throw(env, kBadArgument,
          "headerBytes must be at least " + std::to_string(kSlotHeaderMin) + ", got " +
              std::to_string(header_bytes));
  }
  Napi::ArrayBuffer ab = view.ArrayBuffer();
  if (ab.IsDetached()) Throw(env, kBadArgument, "data is detached");
  const uint8_t* data = static_cast<const uint8_t*>(ab.Data()) + view.ByteOffset();
  size_t len = view.ByteLength();

  size_t count = len / header_bytes;
  std::vector<SlotHeader> headers(count);
  count = DecodeSlotHeaders(data, len, header_bytes, block_bytes, headers.data(), count);

  Napi::Uint8Array status = Napi::Uint8Array::New(env, count);
  Napi::Uint8Array key_length = Napi::Uint8Array::New(env, count);
  Napi::Buffer<uint8_t> keys = Napi::Buffer<uint8_t>::New(env, count * kSlotKeyMax);
  Napi::Float64Array length = Napi::Float64Array::New(env, count);
  Napi::Uint32Array checksum = Napi::Uint32Array::New(env, count);
  Napi::Float64Array generation = Napi::Float64Array::New(env, count);
  for (size_t i = 0; i < count; i++) {
    const SlotHeader& h = headers[i];
    status[i] = static_cast<uint8_t>(h.status);
    key_length[i] = static_cast<uint8_t>(h.key_length);
    std::memcpy(keys.Data() + i * kSlotKeyMax, h.key, kSlotKeyMax);
    // Both are at most 2^53 - 1 in a valid header (block_bytes came in as a safe integer).
    length[i] = static_cast<double>(h.length);
    checksum[i] = h.checksum;
    generation[i] = static_cast<double>(h.generation);
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("status", status);
  out.Set("keyLength", key_length);
  out.Set("keys", keys);
  out.Set("length", length);
  out.Set("checksum", checksum);
  out.Set("generation", generation);
  return out;
}

}  // namespace kvtier
