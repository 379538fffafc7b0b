// The GPU decode kernels' geometry and their host reference (codec_decode.h built for the CPU).
#pragma once
#include <napi.h>

#include "../codec/codec.h"
#include "codec_decode.h"

namespace kvtier {

// The kernels' view of a checked codec (codec::CheckParams passed).
gpucodec::Shape GpuCodecShape(const codec::Params& p);

// gpuCodecReference(params, src: Uint8Array, dst: Uint8Array, blocks): decodes as the GPU
// kernels do, on the calling thread, refusing what codecDecode refuses (headers first, dst
// untouched). For tests: it is what makes the kernels' arithmetic checkable without a GPU.
Napi::Value GpuCodecReferenceJs(const Napi::CallbackInfo& info);

}  // namespace kvtier
