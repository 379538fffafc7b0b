// JavaScript face of a FileHandle.
#pragma once
#include <napi.h>

#include <memory>

#include "file_handle.h"

namespace kvtier {

class File : public Napi::ObjectWrap<File> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit File(const Napi::CallbackInfo& info);

  // The handle, or nullptr once closed.
  std::shared_ptr<FileHandle> handle() const { return handle_; }

 private:
  Napi::Value Path(const Napi::CallbackInfo& info);
  Napi::Value Direct(const Napi::CallbackInfo& info);
  Napi::Value DirectReason(const Napi::CallbackInfo& info);
  Napi::Value MemAlign(const Napi::CallbackInfo& info);
  Napi::Value OffsetAlign(const Napi::CallbackInfo& info);
  Napi::Value Closed(const Napi::CallbackInfo& info);
  Napi::Value Size(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Lock(const Napi::CallbackInfo& info);

  std::shared_ptr<FileHandle> handle_;  // reset by close()
  std::string path_;
  bool direct_ = false;
  std::string directReason_;
  uint32_t memAlign_ = 1;
  uint32_t offsetAlign_ = 1;
};

}  // namespace kvtier
