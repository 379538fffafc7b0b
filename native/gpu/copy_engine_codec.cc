// The copy engine's decode: encoded KV blocks (docs/codecs.md) in pinned host memory become
// decoded blocks in GPU memory. One DMA copies the encoded form into the lane's HBM staging (so
// PCIe carries the small form), then a decode kernel (kernels.cu, arithmetic in codec_decode.h)
// writes the decoded blocks at HBM speed. Completion goes through the engine's completer thread
// and promise, like a copy batch.
#include <algorithm>
#include <memory>
#include <mutex>
#include <string>

#include "../codec/codec_js.h"
#include "../common/args.h"
#include "../common/descriptors.h"
#include "../common/errors.h"
#include "../common/targets.h"
#include "../shim/cuda.h"
#include "codec_reference.h"
#include "copy_engine.h"
#include "copy_engine_batch.h"

namespace kvtier {

namespace cu = shim::cu;
using shim::Cuda;

namespace {

constexpr unsigned kThreads = 256;
constexpr uint64_t kMaxGrid = 8192;  // grid-stride beyond this: enough to fill any GPU

int DecoderIndex(codec::Codec c) {
  return c == codec::Codec::kFp8E4m3 ? 0 : c == codec::Codec::kInt8 ? 1 : 2;
}

}  // namespace

// decode(params, src: NativeRegion, srcOffset, dst: NativeDeviceRegion, dstOffset, blocks)
//   -> Promise<Float64Array> ([decoded bytes])
// Refused before anything is queued (KVTIER_BAD_ARGUMENT) exactly where codecDecode refuses: any
// block's header not the one these parameters write; and where the memory does not fit: a source
// that is not pinned host memory, a destination not GPU memory of this engine's device or not
// aligned to the dtype, ranges out of bounds.
Napi::Value CopyEngine::Decode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (life_.closed()) Throw(env, kClosed, "GPU copy engine is closed");
  const codec::Params p = CodecParamsArg(env, info[0]);
  TargetRef srcRef = ClassifyTarget(env, info[1], 0);
  const uint64_t srcOffset = ByteCountArg(env, info[2], "srcOffset");
  TargetRef dstRef = ClassifyTarget(env, info[3], 1);
  const uint64_t dstOffset = ByteCountArg(env, info[4], "dstOffset");
  const uint64_t blocks = ByteCountArg(env, info[5], "blocks");
  // Pointers only once no more user JavaScript can run (see ReadBatchArgs).
  std::vector<Target> targets;
  targets.push_back(TargetMemory(env, srcRef, 0));
  targets.push_back(TargetMemory(env, dstRef, 1));
  const Target& src = targets[0];
  const Target& dst = targets[1];
  if (src.memory == nullptr || src.device) {
    Throw(env, kBadArgument, "the encoded blocks must be in a host Region");
  }
  if (!src.memory->pinned()) {
    // A pageable source makes the driver copy synchronously, on the event loop.
    Throw(env, kBadArgument, "the encoded blocks must be in pinned host memory");
  }
  if (!dst.device) Throw(env, kBadArgument, "the decoded blocks go to a DeviceRegion");
  if (dst.device->device() != device_) {
    Throw(env, kBadArgument,
          "the DeviceRegion is memory of device " + std::to_string(dst.device->device()) +
              "; this engine runs on device " + std::to_string(device_));
  }
  const gpucodec::Shape shape = GpuCodecShape(p);
  if (srcOffset > src.size || (src.size - srcOffset) / shape.encodedBytes < blocks) {
    Throw(env, kBadArgument,
          "the source holds fewer than " + std::to_string(blocks) + " encoded blocks of " +
              std::to_string(shape.encodedBytes) + " bytes from offset " +
              std::to_string(srcOffset));
  }
  if (dstOffset > dst.size || (dst.size - dstOffset) / shape.decodedBytes < blocks) {
    Throw(env, kBadArgument,
          "the DeviceRegion holds fewer than " + std::to_string(blocks) + " blocks of " +
              std::to_string(shape.decodedBytes) + " bytes from offset " +
              std::to_string(dstOffset));
  }
  const uint8_t* in = src.data + srcOffset;
  const cu::DevicePtr out = reinterpret_cast<cu::DevicePtr>(dst.data) + dstOffset;
  const uint64_t elementBytes = p.dtype == codec::Dtype::kFp32 ? 4 : 2;
  if (out % elementBytes != 0) {
    Throw(env, kBadArgument,
          "the destination offset must be a multiple of " + std::to_string(elementBytes));
  }
  // Every header first, as the CPU decoder does: a refused batch leaves the destination as it was.
  for (uint64_t b = 0; b < blocks; b++) {
    if (const char* why = codec::CheckHeader(p, in + b * shape.encodedBytes)) {
      Throw(env, kBadArgument, "block " + std::to_string(b) + ": " + why);
    }
  }
  cu::Function kernel = decodeKernels_[DecoderIndex(p.codec)];
  if (kernel == nullptr) Throw(env, kNotAvailable, decodeReason_);

  auto batch = std::make_unique<JsBatch>(env);
  batch->results.assign(1, static_cast<double>(blocks * shape.decodedBytes));
  Napi::Promise promise = batch->deferred.Promise();
  if (blocks == 0) {
    batch->deferred.Resolve(Napi::Float64Array::New(env, 1));
    return promise;
  }
  Cuda& cuda = Cuda::instance();
  MakeReady(env);
  Lane& lane = lanes_[nextStream_++ % lanes_.size()];
  const uint64_t run =
      std::max<uint64_t>(1, std::min<uint64_t>(blocks, decodeStaging_ / shape.encodedBytes));
  // Larger calls go in runs of blocks that fit, one after another on the lane's stream, so a
  // lane's staging stays bounded (it is kept for the engine's life).
  const uint64_t staging = run * shape.encodedBytes;
  if (!EnsureStaging(lane, staging)) {
    Throw(env, kIo, "no room in GPU memory to stage " + std::to_string(staging) + " encoded bytes");
  }
  HoldTargets(env, targets, &batch->borrowed, &batch->keepAlive);
  cu::Result rc = cu::kSuccess;
  const char* step = "";
  for (uint64_t first = 0; first < blocks && rc == cu::kSuccess; first += run) {
    const uint64_t n = std::min(run, blocks - first);
    // The lane's stream orders this copy after the previous run's kernel, its staging's reader.
    rc = api_->memcpyAsync(lane.staging,
                           reinterpret_cast<cu::DevicePtr>(in + first * shape.encodedBytes),
                           n * shape.encodedBytes, lane.stream);
    step = "cuMemcpyAsync (encoded blocks to staging)";
    if (rc != cu::kSuccess) break;
    cu::DevicePtr staged = lane.staging;
    cu::DevicePtr target = out + first * shape.decodedBytes;
    gpucodec::Shape s = shape;
    unsigned long long count = n;
    void* params[] = {&staged, &target, &s, &count};
    const uint64_t total = n * shape.elements;
    const unsigned grid =
        static_cast<unsigned>(std::min<uint64_t>((total + kThreads - 1) / kThreads, kMaxGrid));
    rc = api_->launchKernel(kernel, grid, 1, 1, kThreads, 1, 1, 0, lane.stream, params, nullptr);
    step = "cuLaunchKernel (decode)";
  }
  if (rc == cu::kSuccess) {
    batch->event = spareEvents_.back();
    spareEvents_.pop_back();
    rc = api_->eventRecord(batch->event, lane.stream);
    step = "cuEventRecord";
    if (rc != cu::kSuccess) {
      spareEvents_.push_back(batch->event);
      batch->event = nullptr;
    }
  }
  if (rc != cu::kSuccess) {
    // What was queued still runs; it must end before the memory is let go.
    (void)api_->streamSynchronize(lane.stream);
    ReleaseTargets(env, &batch->borrowed);
    Throw(env, kIo, cuda.fail(step, rc));
  }
  HandOff(env, std::move(batch));
  return promise;
}

// decodePath: '' when the decode kernels are loaded, else why not.
Napi::Value CopyEngine::DecodePath(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), decodeKernels_[0] != nullptr ? "" : decodeReason_);
}

}  // namespace kvtier
