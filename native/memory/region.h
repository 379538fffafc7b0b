// JavaScript face of a RegionMemory: an external ArrayBuffer over native memory, closed explicitly
// or by the garbage collector.
#pragma once
#include <napi.h>

#include <memory>
#include <vector>

#include "region_memory.h"

namespace kvtier {

class Region : public Napi::ObjectWrap<Region> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Region(const Napi::CallbackInfo& info);
  ~Region() override;

  // The memory of the open region whose buffer starts at `data`, or nullptr.
  static std::shared_ptr<RegionMemory> MemoryOf(Napi::Env env, const void* data);

  // The memory, or nullptr once closed.
  std::shared_ptr<RegionMemory> memory() const { return memory_; }
  bool closed() const { return !memory_; }

 private:
  Napi::Value Buffer(const Napi::CallbackInfo& info);
  Napi::Value Slice(const Napi::CallbackInfo& info);
  Napi::Value Pinned(const Napi::CallbackInfo& info);
  Napi::Value PinReason(const Napi::CallbackInfo& info);
  Napi::Value ByteLength(const Napi::CallbackInfo& info);
  Napi::Value Closed(const Napi::CallbackInfo& info);
  Napi::Value FileId(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  void Forget();
  // An external ArrayBuffer over [offset, offset + length) whose finalizer holds the memory.
  Napi::ArrayBuffer External(Napi::Env env, size_t offset, size_t length);

  std::shared_ptr<RegionMemory> memory_;       // reset by close()
  Napi::Reference<Napi::ArrayBuffer> buffer_;  // made on first use
  // Slices handed out (weak): detached on close like the whole buffer.
  std::vector<Napi::Reference<Napi::ArrayBuffer>> slices_;
  // The largest ArrayBuffer this Node makes (buffer.constants.MAX_LENGTH); bigger regions are
  // reached through slices.
  size_t maxArrayBuffer_ = 0;
  // Kept apart from memory_ so a closed region still describes itself.
  size_t size_ = 0;
  bool pinned_ = false;
  std::string pinReason_;
  // "<dev>:<inode>" of a shared file mapping; empty for allocated memory.
  std::string fileId_;
};

}  // namespace kvtier
