#include "device_region.h"

#include <cstring>

#include "../common/args.h"
#include "../common/errors.h"
#include "../common/instance_data.h"

namespace kvtier {

namespace cu = shim::cu;

Napi::Function DeviceRegion::Define(Napi::Env env) {
  Napi::Function ctor = DefineClass(env, "NativeDeviceRegion",
                                    {InstanceAccessor<&DeviceRegion::ByteLength>("byteLength"),
                                     InstanceAccessor<&DeviceRegion::Device>("device"),
                                     InstanceAccessor<&DeviceRegion::Pointer>("pointer"),
                                     InstanceAccessor<&DeviceRegion::Origin>("origin"),
                                     InstanceMethod<&DeviceRegion::IpcHandle>("ipcHandle"),
                                     InstanceMethod<&DeviceRegion::Close>("close")});
  InstanceData::Get(env).deviceRegionCtor = Napi::Persistent(ctor);
  return ctor;
}

// new NativeDeviceRegion({ origin: 'owned', device, bytes })
// new NativeDeviceRegion({ origin: 'wrapped', device, pointer: bigint, bytes })
// new NativeDeviceRegion({ origin: 'imported', device, handle: Uint8Array(64), offset, bytes })
DeviceRegion::DeviceRegion(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceRegion>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) Throw(env, kBadArgument, "device region options must be an object");
  Napi::Object opts = info[0].As<Napi::Object>();
  std::string origin = StringOption(opts, "origin", "owned");
  Napi::Value dv = opts.Get("device");
  uint64_t device = dv.IsUndefined() ? 0 : ByteCountArg(env, dv, "device");
  if (device > 1024) Throw(env, kBadArgument, "device must be a CUDA device ordinal");
  Napi::Value bv = opts.Get("bytes");
  uint64_t bytes = bv.IsUndefined() ? 0 : ByteCountArg(env, bv, "region size");

  DeviceMemory::Failure failure;
  int ordinal = static_cast<int>(device);
  if (origin == "owned") {
    if (bytes == 0) Throw(env, kBadArgument, "region size must be at least 1 byte");
    memory_ = DeviceMemory::Allocate(ordinal, bytes, &failure);
    origin_ = "owned";
  } else if (origin == "wrapped") {
    Napi::Value pv = opts.Get("pointer");
    if (!pv.IsBigInt()) Throw(env, kBadArgument, "pointer must be a bigint device address");
    bool lossless = false;
    uint64_t ptr = pv.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless || ptr == 0)
      Throw(env, kBadArgument, "pointer must be a non-zero 64-bit address");
    if (bytes == 0) Throw(env, kBadArgument, "region size must be at least 1 byte");
    memory_ = DeviceMemory::Wrap(ordinal, ptr, bytes, &failure);
    origin_ = "wrapped";
  } else if (origin == "imported") {
    Napi::Value hv = opts.Get("handle");
    if (!hv.IsTypedArray() || hv.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
        hv.As<Napi::Uint8Array>().ByteLength() != sizeof(cu::IpcMemHandle)) {
      Throw(env, kBadArgument, "handle must be a Uint8Array of 64 bytes (a CUDA IPC handle)");
    }
    Napi::Value ov = opts.Get("offset");
    uint64_t offset = ov.IsUndefined() ? 0 : ByteCountArg(env, ov, "offset");
    cu::IpcMemHandle handle;
    std::memcpy(&handle, hv.As<Napi::Uint8Array>().Data(), sizeof(handle));
    memory_ = DeviceMemory::Import(ordinal, handle, offset, bytes, &failure);
    origin_ = "imported";
  } else {
    Throw(env, kBadArgument,
          "origin must be 'owned', 'wrapped' or 'imported', got '" + origin + "'");
  }
  if (!memory_) Throw(env, failure.code, failure.message);
  size_ = memory_->size();
  device_ = memory_->device();
  pointer_ = memory_->ptr();
}

Napi::Value DeviceRegion::ByteLength(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(size_));
}

Napi::Value DeviceRegion::Device(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), device_);
}

Napi::Value DeviceRegion::Pointer(const Napi::CallbackInfo& info) {
  return Napi::BigInt::New(info.Env(), pointer_);
}

Napi::Value DeviceRegion::Origin(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), origin_);
}

// ipcHandle() -> { handle: Uint8Array(64), offset }: what another process passes to import.
Napi::Value DeviceRegion::IpcHandle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!memory_) Throw(env, kClosed, "device region is closed");
  cu::IpcMemHandle handle;
  size_t offset = 0;
  std::string why;
  if (!memory_->ipcHandle(&handle, &offset, &why)) Throw(env, kNotAvailable, why);
  Napi::Uint8Array bytes = Napi::Uint8Array::New(env, sizeof(handle));
  std::memcpy(bytes.Data(), &handle, sizeof(handle));
  Napi::Object out = Napi::Object::New(env);
  out.Set("handle", bytes);
  out.Set("offset", Napi::Number::New(env, static_cast<double>(offset)));
  return out;
}

Napi::Value DeviceRegion::Close(const Napi::CallbackInfo& info) {
  // In-flight transfers hold their own references; the memory goes when the last finishes.
  memory_.reset();
  return info.Env().Undefined();
}

}  // namespace kvtier
