#include "targets.h"

#include "../gpu/device_region.h"
#include "../io/file.h"
#include "../memory/region.h"
#include "descriptors.h"
#include "errors.h"
#include "instance_data.h"

namespace kvtier {

TargetRef ClassifyTarget(Napi::Env env, Napi::Value v, size_t index) {
  TargetRef ref{v};
  InstanceData& data = InstanceData::Get(env);
  if (!v.IsObject()) return ref;
  std::string what = "target " + std::to_string(index);
  Napi::Object o = v.As<Napi::Object>();
  if (o.InstanceOf(data.regionCtor.Value())) {
    ref.region = UnwrapOrThrow<Region>(env, o, what);
  } else if (!data.deviceRegionCtor.IsEmpty() && o.InstanceOf(data.deviceRegionCtor.Value())) {
    ref.deviceRegion = UnwrapOrThrow<DeviceRegion>(env, o, what);
  }
  return ref;
}

Target TargetMemory(Napi::Env env, const TargetRef& ref, size_t index) {
  Target t;
  std::string what = "target " + std::to_string(index);
  if (ref.region != nullptr) {
    t.memory = ref.region->memory();
    if (!t.memory) Throw(env, kClosed, what + " is a closed region");
    t.data = t.memory->data();
    t.size = t.memory->size();
    return t;
  }
  if (ref.deviceRegion != nullptr) {
    t.device = ref.deviceRegion->memory();
    if (!t.device) Throw(env, kClosed, what + " is a closed device region");
    t.data = reinterpret_cast<uint8_t*>(t.device->ptr());
    t.size = t.device->size();
    return t;
  }
  Napi::Value v = ref.value;
  Napi::ArrayBuffer ab;
  size_t byteOffset = 0;
  size_t byteLength = 0;
  if (v.IsTypedArray()) {
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    ab = ta.ArrayBuffer();
    byteOffset = ta.ByteOffset();
    byteLength = ta.ByteLength();
  } else if (v.IsDataView()) {
    Napi::DataView dv = v.As<Napi::DataView>();
    ab = dv.ArrayBuffer();
    byteOffset = dv.ByteOffset();
    byteLength = dv.ByteLength();
  } else if (v.IsArrayBuffer()) {
    ab = v.As<Napi::ArrayBuffer>();
    byteLength = ab.ByteLength();
  } else {
    Throw(env, kBadArgument,
          what + " must be a Region, a DeviceRegion, a TypedArray, a DataView or an ArrayBuffer");
  }
  if (ab.IsDetached()) Throw(env, kBadArgument, what + " is backed by a detached ArrayBuffer");
  t.data = static_cast<uint8_t*>(ab.Data()) + byteOffset;
  t.size = byteLength;
  t.js = v;
  // A view or the buffer of one of our regions: hold the region's memory itself, so a close()
  // (and the buffer's collection) while this batch runs cannot unmap it.
  t.memory = Region::MemoryOf(env, ab.Data());
  return t;
}

std::shared_ptr<FileHandle> ResolveFile(Napi::Env env, Napi::Value v, size_t index) {
  InstanceData& data = InstanceData::Get(env);
  std::string what = "file " + std::to_string(index);
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data.fileCtor.Value())) {
    Throw(env, kBadArgument, what + " must be a NativeFile");
  }
  std::shared_ptr<FileHandle> h = UnwrapOrThrow<File>(env, v.As<Napi::Object>(), what)->handle();
  if (!h) Throw(env, kClosed, what + " is closed");
  return h;
}

BatchArgs ReadBatchArgs(const Napi::CallbackInfo& info, bool files) {
  Napi::Env env = info.Env();
  BatchArgs args;
  Napi::Value d = info[0];
  if (!d.IsTypedArray() || d.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    Throw(env, kBadArgument, "descriptors must be a Float64Array");
  }
  args.descs = d.As<Napi::Float64Array>();
  if (args.descs.ElementLength() % kStride != 0) {
    Throw(env, kBadArgument, "descriptors length must be a multiple of 6");
  }
  args.count = args.descs.ElementLength() / kStride;
  if (!info[1].IsArray() || (files && !info[2].IsArray())) {
    Throw(env, kBadArgument,
          files ? "targets and files must be arrays" : "targets must be an array");
  }
  Napi::Array targetList = info[1].As<Napi::Array>();
  std::vector<TargetRef> refs;
  refs.reserve(targetList.Length());
  for (uint32_t i = 0; i < targetList.Length(); ++i) {
    refs.push_back(ClassifyTarget(env, targetList.Get(i), i));
  }
  if (files) {
    Napi::Array fileList = info[2].As<Napi::Array>();
    args.files.reserve(fileList.Length());
    for (uint32_t i = 0; i < fileList.Length(); ++i) {
      args.files.push_back(ResolveFile(env, fileList.Get(i), i));
    }
  }
  if (args.descs.ArrayBuffer().IsDetached()) Throw(env, kBadArgument, "descriptors are detached");
  args.targets.reserve(refs.size());
  for (size_t i = 0; i < refs.size(); ++i) args.targets.push_back(TargetMemory(env, refs[i], i));
  return args;
}

}  // namespace kvtier
