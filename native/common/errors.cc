#include "errors.h"

#include <cerrno>
#include <cstring>

#include "instance_data.h"

namespace kvtier {

void RegisterErrorClass(Napi::Env env, Napi::Function ctor) {
  InstanceData::Get(env).errorClass = Napi::Persistent(ctor);
}

Napi::Error MakeError(Napi::Env env, const char* code, const std::string& message, int errnum,
                      const char* syscall) {
  std::string text = message;
  if (errnum != 0) {
    text += " (";
    text += std::strerror(errnum);
    text += ")";
  }
  Napi::Object options = Napi::Object::New(env);
  if (errnum != 0) options.Set("errno", Napi::Number::New(env, errnum));
  if (syscall != nullptr) options.Set("syscall", Napi::String::New(env, syscall));

  InstanceData& data = InstanceData::Get(env);
  if (!data.errorClass.IsEmpty()) {
    Napi::Object err =
        data.errorClass.New({Napi::String::New(env, code), Napi::String::New(env, text), options});
    return Napi::Error(env, err);
  }
  Napi::Error err = Napi::Error::New(env, text);
  err.Set("code", Napi::String::New(env, code));
  if (errnum != 0) err.Set("errno", Napi::Number::New(env, errnum));
  if (syscall != nullptr) err.Set("syscall", Napi::String::New(env, syscall));
  return err;
}

const char* CodeForErrno(int errnum) {
  switch (errnum) {
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return kNoSpace;
    default:
      return kIo;
  }
}

}  // namespace kvtier
