// The codecs' JavaScript surface (lib/core/codec.ts). These calls encode or decode `blocks`
// consecutive blocks on the calling thread; NativeCodecPool (codec_pool.h) does the same on
// kvtier's codec threads.
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>

#include "codec.h"

namespace kvtier {

// codecEncode(params, src: Uint8Array, dst: Uint8Array, blocks: number, isa?: 'scalar' | 'auto')
// codecDecode(params, src: Uint8Array, dst: Uint8Array, blocks: number, isa?: 'scalar' | 'auto')
// codecSizes(params): { decodedBytes, encodedBytes }
// codecReadHeader(src: Uint8Array): params
// codecIsa(): 'avx2' | 'scalar'
// NativeCodecPool (codec_pool.h)
Napi::Object CodecExports(Napi::Env env, Napi::Object exports);

// The codec parameters object every call takes, checked (KVTIER_BAD_ARGUMENT otherwise).
codec::Params CodecParamsArg(Napi::Env env, Napi::Value v);
// 'scalar' or 'auto' (undefined: 'auto', the fastest path this CPU has).
codec::Isa CodecIsaArg(Napi::Env env, Napi::Value v);
// Throws unless src holds `blocks` blocks of src_block bytes, dst of dst_block, not overlapping.
void CheckCodecSpans(Napi::Env env, const uint8_t* src, size_t src_len, uint64_t src_block,
                     const uint8_t* dst, size_t dst_len, uint64_t dst_block, uint64_t blocks);

}  // namespace kvtier
