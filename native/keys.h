// Chained block keys (docs/keys.md): key[i] = SHA-256(key[i-1] || tokens of block i as uint32
// little-endian), key[-1] = the namespace root. Hashing a long prompt is one native call.
#pragma once
#include <napi.h>

namespace kvtier {

// chainHash(tokens: Uint32Array, blockTokens: number, root: Uint8Array(32)) -> Buffer(n * 32)
Napi::Value ChainHash(const Napi::CallbackInfo& info);
// hex(bytes: ArrayBufferView, start = 0, end = length) -> string: lowercase hex of [start, end)
Napi::Value HexJs(const Napi::CallbackInfo& info);
// crc32c(data: ArrayBufferView, seed = 0) -> number
Napi::Value Crc32cJs(const Napi::CallbackInfo& info);

}  // namespace kvtier
