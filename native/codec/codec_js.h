// The codecs' JavaScript surface (lib/codec/codec.ts). Synchronous: one call encodes or decodes
// `blocks` consecutive blocks on the calling thread (see docs/codecs.md for why).
#pragma once
#include <napi.h>

namespace kvtier {

// codecEncode(params, src: Uint8Array, dst: Uint8Array, blocks: number): void
// codecDecode(params, src: Uint8Array, dst: Uint8Array, blocks: number, isa?: 'scalar' | 'auto')
// codecSizes(params): { decodedBytes, encodedBytes }
// codecReadHeader(src: Uint8Array): params
// codecIsa(): 'avx2' | 'scalar'
Napi::Object CodecExports(Napi::Env env, Napi::Object exports);

}  // namespace kvtier
