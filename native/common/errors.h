// Errors raised from native code are instances of the TypeScript KvtierError class (registered
// once through init()), so callers never see an untyped Error from the addon.
#pragma once
#include <napi.h>

#include <string>

namespace kvtier {

// Stable codes shared with lib/errors.ts.
inline constexpr const char* kBadArgument = "KVTIER_BAD_ARGUMENT";
inline constexpr const char* kNotAvailable = "KVTIER_NOT_AVAILABLE";
inline constexpr const char* kIo = "KVTIER_IO";
inline constexpr const char* kNoSpace = "KVTIER_NO_SPACE";
inline constexpr const char* kClosed = "KVTIER_CLOSED";
inline constexpr const char* kPeer = "KVTIER_PEER";

// Remembers the KvtierError constructor for this environment (per-env instance data).
void RegisterErrorClass(Napi::Env env, Napi::Function ctor);

// Builds a KvtierError (or a plain Error with .code before init()).
Napi::Error MakeError(Napi::Env env, const char* code, const std::string& message, int errnum = 0,
                      const char* syscall = nullptr);

// Maps an errno to the kvtier code an I/O failure with it should carry.
const char* CodeForErrno(int errnum);

[[noreturn]] inline void Throw(Napi::Env env, const char* code, const std::string& message,
                               int errnum = 0, const char* syscall = nullptr) {
  throw MakeError(env, code, message, errnum, syscall);
}

}  // namespace kvtier
