// Argument checks for values crossing from JavaScript: sizes and offsets must be whole,
// non-negative and exactly representable, or the call fails before touching any state.
#pragma once
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "errors.h"

namespace kvtier {

// Largest integer a double holds exactly; anything above cannot be a trustworthy byte count.
inline constexpr double kMaxSafeInteger = 9007199254740991.0;

inline bool IsByteCount(double v) {
  return std::isfinite(v) && v >= 0 && v <= kMaxSafeInteger && std::floor(v) == v;
}

inline uint64_t ByteCountArg(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsNumber()) Throw(env, kBadArgument, std::string(what) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!IsByteCount(d)) {
    Throw(env, kBadArgument,
          std::string(what) + " must be a non-negative safe integer, got " + std::to_string(d));
  }
  return static_cast<uint64_t>(d);
}

inline std::string StringOption(Napi::Object opts, const char* key, const std::string& fallback) {
  Napi::Value v = opts.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsString()) {
    Throw(opts.Env(), kBadArgument, std::string("option ") + key + " must be a string");
  }
  return v.As<Napi::String>().Utf8Value();
}

inline bool BoolOption(Napi::Object opts, const char* key, bool fallback) {
  Napi::Value v = opts.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsBoolean()) {
    Throw(opts.Env(), kBadArgument, std::string("option ") + key + " must be a boolean");
  }
  return v.As<Napi::Boolean>().Value();
}

}  // namespace kvtier
