// kvtier's GPU kernels. The first copies a list of byte segments inside GPU memory (or between GPU memory
// and mapped pinned host memory). The copy engine uses it where DMA is slow: gathers and scatters
// of many small pieces (an engine block spread over 64 pieces of 64 KiB), which it rearranges in
// HBM at HBM speed, leaving PCIe to one large DMA copy.
//
// Built to PTX by scripts/gen-ptx.sh (nvcc), embedded in kernels_ptx.h, and JIT-compiled by the
// driver at run time, so the addon itself needs no CUDA toolkit. Regenerate after editing.

struct KvtierSegment {
  unsigned long long src;
  unsigned long long dst;
  unsigned long long len;
};

extern "C" __global__ void kvtier_copy_segments(const KvtierSegment* segments, unsigned count) {
  for (unsigned s = blockIdx.x; s < count; s += gridDim.x) {
    const KvtierSegment seg = segments[s];
    const char* src = reinterpret_cast<const char*>(seg.src);
    char* dst = reinterpret_cast<char*>(seg.dst);
    unsigned long long len = seg.len;
    if (((seg.src | seg.dst | len) & 15ull) == 0) {
      // 16-byte loads and stores: a warp moves 512 contiguous bytes per instruction.
      const uint4* s4 = reinterpret_cast<const uint4*>(src);
      uint4* d4 = reinterpret_cast<uint4*>(dst);
      unsigned long long n = len >> 4;
      for (unsigned long long i = threadIdx.x; i < n; i += blockDim.x) d4[i] = s4[i];
    } else {
      for (unsigned long long i = threadIdx.x; i < len; i += blockDim.x) dst[i] = src[i];
    }
  }
}

// Decoders of encoded KV blocks (docs/codecs.md) for the way into GPU memory: `blocks` consecutive
// encoded blocks at src (HBM the small form was copied into by one DMA, or mapped pinned host
// memory) become decoded blocks at dst. One thread an element, grid-stride; every value is
// computed by codec_decode.h, which the addon also builds for the CPU as the tests' reference.
#include "codec_decode.h"

template <unsigned C>
__device__ __forceinline__ void DecodeBlocks(const unsigned char* src, unsigned char* dst,
                                             const kvtier::gpucodec::Shape& s,
                                             unsigned long long blocks) {
  const unsigned long long total = blocks * s.elements;
  const unsigned long long step = static_cast<unsigned long long>(gridDim.x) * blockDim.x;
  for (unsigned long long k = static_cast<unsigned long long>(blockIdx.x) * blockDim.x +
                              threadIdx.x;
       k < total; k += step) {
    const unsigned long long b = k / s.elements;
    kvtier::gpucodec::DecodeElement<C>(s, src, dst, b, k - b * s.elements);
  }
}

extern "C" __global__ void kvtier_decode_fp8(const unsigned char* src, unsigned char* dst,
                                             kvtier::gpucodec::Shape s, unsigned long long blocks) {
  DecodeBlocks<kvtier::gpucodec::kFp8>(src, dst, s, blocks);
}

extern "C" __global__ void kvtier_decode_int8(const unsigned char* src, unsigned char* dst,
                                              kvtier::gpucodec::Shape s,
                                              unsigned long long blocks) {
  DecodeBlocks<kvtier::gpucodec::kInt8>(src, dst, s, blocks);
}

// kivi2 and kivi4: the code width is s.bits.
extern "C" __global__ void kvtier_decode_kivi(const unsigned char* src, unsigned char* dst,
                                              kvtier::gpucodec::Shape s,
                                              unsigned long long blocks) {
  DecodeBlocks<kvtier::gpucodec::kKivi2>(src, dst, s, blocks);
}
