#include "region.h"

#include "../common/args.h"
#include "../common/errors.h"
#include "../common/instance_data.h"

namespace kvtier {

Napi::Function Region::Define(Napi::Env env) {
  Napi::Function ctor = DefineClass(
      env, "NativeRegion",
      {InstanceAccessor<&Region::Buffer>("buffer"), InstanceMethod<&Region::Slice>("slice"),
       InstanceAccessor<&Region::Pinned>("pinned"),
       InstanceAccessor<&Region::PinReason>("pinReason"),
       InstanceAccessor<&Region::ByteLength>("byteLength"),
       InstanceAccessor<&Region::Closed>("closed"), InstanceAccessor<&Region::FileId>("fileId"),
       InstanceMethod<&Region::Close>("close")});
  InstanceData::Get(env).regionCtor = Napi::Persistent(ctor);
  return ctor;
}

// new NativeRegion(bytes, pin: 'auto' | 'on' | 'off', maxArrayBuffer)
// new NativeRegion({ path, bytes }, 'off', maxArrayBuffer): a shared mapping of a file
Region::Region(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Region>(info) {
  Napi::Env env = info.Env();
  if (info[0].IsObject()) {
    Napi::Object opts = info[0].As<Napi::Object>();
    std::string path = StringOption(opts, "path", "");
    if (path.empty()) Throw(env, kBadArgument, "a shared mapping needs a path");
    uint64_t bytes = ByteCountArg(env, opts.Get("bytes"), "mapping size");
    maxArrayBuffer_ = info[2].IsNumber() ? ByteCountArg(env, info[2], "maxArrayBuffer") : 0;
    std::string error;
    int errnum = 0;
    memory_ = RegionMemory::MapShared(path, bytes, &error, &errnum, &fileId_);
    if (!memory_) {
      if (errnum == 0) Throw(env, kBadArgument, error);
      Throw(env, CodeForErrno(errnum), error, errnum, "mmap");
    }
    InstanceData::Get(env).regionMemory[memory_->data()] = memory_;
    size_ = memory_->size();
    return;
  }
  uint64_t bytes = ByteCountArg(env, info[0], "region size");
  if (bytes == 0) Throw(env, kBadArgument, "region size must be at least 1 byte");
  std::string pinText = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "auto";
  RegionMemory::PinMode pin;
  if (pinText == "auto") {
    pin = RegionMemory::PinMode::kAuto;
  } else if (pinText == "on") {
    pin = RegionMemory::PinMode::kOn;
  } else if (pinText == "off") {
    pin = RegionMemory::PinMode::kOff;
  } else {
    Throw(env, kBadArgument, "pin must be 'auto', 'on' or 'off', got '" + pinText + "'");
  }

  maxArrayBuffer_ = info[2].IsNumber() ? ByteCountArg(env, info[2], "maxArrayBuffer") : 0;
  std::string error;
  bool notAvailable = false;
  memory_ = RegionMemory::Allocate(bytes, pin, &error, &notAvailable);
  if (!memory_) Throw(env, notAvailable ? kNotAvailable : kNoSpace, error);
  InstanceData::Get(env).regionMemory[memory_->data()] = memory_;
  size_ = memory_->size();
  pinned_ = memory_->pinned();
  pinReason_ = memory_->pinReason();
}

Napi::ArrayBuffer Region::External(Napi::Env env, size_t offset, size_t length) {
  if (maxArrayBuffer_ != 0 && length > maxArrayBuffer_) {
    // Checked here because a refused external ArrayBuffer would run its finalizer twice.
    Throw(env, kBadArgument,
          std::to_string(length) + " bytes exceed the largest ArrayBuffer this Node makes (" +
              std::to_string(maxArrayBuffer_) + "); take views of the region piece by piece");
  }
  // The ArrayBuffer's finalizer owns one reference, so memory outlives neither JS views nor
  // in-flight I/O, whichever ends last.
  auto* hint = new std::shared_ptr<RegionMemory>(memory_);
  return Napi::ArrayBuffer::New(
      env, memory_->data() + offset, length,
      [](Napi::Env, void*, std::shared_ptr<RegionMemory>* h) { delete h; }, hint);
}

Napi::Value Region::Buffer(const Napi::CallbackInfo& info) {
  if (closed()) Throw(info.Env(), kClosed, "region is closed");
  if (buffer_.IsEmpty()) buffer_ = Napi::Persistent(External(info.Env(), 0, memory_->size()));
  return buffer_.Value();
}

// slice(offset, length) -> ArrayBuffer over that part of the region (regions larger than the
// largest ArrayBuffer are reached this way).
Napi::Value Region::Slice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed()) Throw(env, kClosed, "region is closed");
  uint64_t offset = ByteCountArg(env, info[0], "offset");
  uint64_t length = ByteCountArg(env, info[1], "length");
  if (offset > memory_->size() || length > memory_->size() - offset) {
    Throw(env, kBadArgument,
          std::to_string(length) + " bytes at offset " + std::to_string(offset) +
              " do not fit a region of " + std::to_string(memory_->size()) + " bytes");
  }
  Napi::ArrayBuffer ab = External(env, offset, length);
  // Forget slices already collected, so a long-lived region's list stays short.
  std::erase_if(slices_, [](Napi::Reference<Napi::ArrayBuffer>& r) { return r.Value().IsEmpty(); });
  slices_.push_back(Napi::Weak(ab));
  return ab;
}

Napi::Value Region::Pinned(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), pinned_);
}

Napi::Value Region::PinReason(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), pinReason_);
}

Napi::Value Region::ByteLength(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(size_));
}

Napi::Value Region::Closed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), closed());
}

Napi::Value Region::FileId(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), fileId_);
}

Napi::Value Region::Close(const Napi::CallbackInfo& info) {
  if (closed()) return info.Env().Undefined();
  // Detaching makes every JS view of the memory zero-length at once, so nothing in JavaScript can
  // reach the pages after they are unmapped.
  if (!buffer_.IsEmpty()) {
    Napi::ArrayBuffer ab = buffer_.Value();
    if (!ab.IsDetached()) ab.Detach();
    buffer_.Reset();
  }
  for (auto& slice : slices_) {
    Napi::ArrayBuffer ab = slice.Value();
    if (!ab.IsEmpty() && !ab.IsDetached()) ab.Detach();
  }
  slices_.clear();
  Forget();
  // In-flight transfers hold their own references; the pages go when the last of them finishes.
  memory_.reset();
  return info.Env().Undefined();
}

}  // namespace kvtier

namespace kvtier {

Region::~Region() { Forget(); }

void Region::Forget() {
  if (!memory_) return;
  auto& registry = InstanceData::Get(Env()).regionMemory;
  auto it = registry.find(memory_->data());
  if (it != registry.end() && !it->second.owner_before(memory_) &&
      !memory_.owner_before(it->second)) {
    registry.erase(it);
  }
}

std::shared_ptr<RegionMemory> Region::MemoryOf(Napi::Env env, const void* data) {
  auto& registry = InstanceData::Get(env).regionMemory;
  auto it = registry.find(data);
  if (it == registry.end()) return nullptr;
  return std::static_pointer_cast<RegionMemory>(it->second.lock());
}

}  // namespace kvtier
