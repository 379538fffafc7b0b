// kvtier's one GPU kernel: copies a list of byte segments inside GPU memory (or between GPU memory
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
