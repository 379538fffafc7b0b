// Registers the addon's classes and functions. The addon moves bytes and knows nothing of keys or
// policy; lib/ decides what moves.
#include <napi.h>

#include "codec/codec_js.h"
#include "common/errors.h"
#include "gpu/codec_reference.h"
#include "gpu/copy_engine.h"
#include "gpu/device_region.h"
#include "gpu/gpu_file_engine.h"
#include "io/engine.h"
#include "io/file.h"
#include "io/slot_header_js.h"
#include "keys.h"
#include "memory/region.h"
#include "net/peer_credentials.h"
#include "net/tcp_transport.h"
#include "net/verbs_link.h"
#include "net/verbs_probe.h"
#include "probe.h"

namespace {

// init(KvtierError): errors thrown from here on are instances of the library's error class.
Napi::Value Init(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) {
    kvtier::Throw(info.Env(), kvtier::kBadArgument, "init needs the KvtierError class");
  }
  kvtier::RegisterErrorClass(info.Env(), info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Object RegisterAll(Napi::Env env, Napi::Object exports) {
  exports.Set("init", Napi::Function::New(env, Init, "init"));
  exports.Set("probe", Napi::Function::New(env, kvtier::Probe, "probe"));
  exports.Set("probeDirect", Napi::Function::New(env, kvtier::ProbeDirect, "probeDirect"));
  exports.Set("chainHash", Napi::Function::New(env, kvtier::ChainHash, "chainHash"));
  exports.Set("hex", Napi::Function::New(env, kvtier::HexJs, "hex"));
  exports.Set("crc32c", Napi::Function::New(env, kvtier::Crc32cJs, "crc32c"));
  exports.Set("decodeSlotHeaders",
              Napi::Function::New(env, kvtier::DecodeSlotHeadersJs, "decodeSlotHeaders"));
  exports.Set("NativeRegion", kvtier::Region::Define(env));
  exports.Set("NativeFile", kvtier::File::Define(env));
  exports.Set("NativeEngine", kvtier::Engine::Define(env));
  exports.Set("NativeDeviceRegion", kvtier::DeviceRegion::Define(env));
  exports.Set("NativeCopyEngine", kvtier::CopyEngine::Define(env));
  exports.Set("NativeGpuFileEngine", kvtier::GpuFileEngine::Define(env));
  exports.Set("NativeTcpTransport", kvtier::TcpTransport::Define(env));
  exports.Set("NativeVerbs", kvtier::VerbsLink::Define(env));
  exports.Set("peerCredentials",
              Napi::Function::New(env, kvtier::PeerCredentials, "peerCredentials"));
  exports.Set("verbsProbe", Napi::Function::New(env, kvtier::VerbsProbe, "verbsProbe"));
  kvtier::CodecExports(env, exports);
  exports.Set("gpuCodecReference",
              Napi::Function::New(env, kvtier::GpuCodecReferenceJs, "gpuCodecReference"));
  return exports;
}

}  // namespace

NODE_API_MODULE(kvtier, RegisterAll)
