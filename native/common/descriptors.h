// The descriptor format every engine's submit() takes: a Float64Array, six numbers per transfer,
// with every index, offset and length checked before anything is queued.
#pragma once
#include <napi.h>

#include <string>
#include <vector>

#include "args.h"
#include "errors.h"
#include "targets.h"

namespace kvtier {

// Fields of one descriptor in the Float64Array the control plane packs.
inline constexpr size_t kStride = 6;
enum Field { kOp = 0, kTarget = 1, kTargetOffset = 2, kLength = 3, kFile = 4, kFileOffset = 5 };

inline std::string Where(size_t i) { return "descriptor " + std::to_string(i) + ": "; }

inline uint64_t Field64(Napi::Env env, const double* d, size_t i, Field f, const char* name) {
  double v = d[f];
  if (!IsByteCount(v)) {
    Throw(env, kBadArgument,
          Where(i) + name + " must be a non-negative safe integer, got " + std::to_string(v));
  }
  return static_cast<uint64_t>(v);
}

// The memory a descriptor names: target index field, offset field and the length field (or *len
// when it is already known, for a copy's source).
inline uint8_t* TargetRange(Napi::Env env, const std::vector<Target>& targets, const double* d,
                            size_t i, Field indexField, Field offsetField, const char* what,
                            uint64_t* len, const Target** which = nullptr) {
  double ti = d[indexField];
  if (!IsByteCount(ti) || ti >= static_cast<double>(targets.size())) {
    Throw(env, kBadArgument, Where(i) + what + " index out of range");
  }
  const Target& target = targets[static_cast<size_t>(ti)];
  uint64_t off = Field64(env, d, i, offsetField, "offset");
  if (indexField == kTarget) *len = Field64(env, d, i, kLength, "length");
  if (off > target.size || *len > target.size - off) {
    Throw(env, kBadArgument,
          Where(i) + std::to_string(*len) + " bytes at offset " + std::to_string(off) +
              " do not fit a " + what + " of " + std::to_string(target.size) + " bytes");
  }
  if (which != nullptr) *which = &target;
  return target.data + off;
}

// Lets go of the buffers HoldTargets referenced (main thread, live environment; at teardown the
// references die with the environment and only the list is dropped).
inline void ReleaseTargets(Napi::Env env, std::vector<napi_ref>* borrowed) {
  for (napi_ref ref : *borrowed) {
    // Fails only for an environment being torn down, which frees the reference itself.
    if (napi_delete_reference(env, ref) != napi_ok) continue;
  }
  borrowed->clear();
}

// Takes a reference on every JavaScript buffer among the targets (released by the caller on the
// main thread when the batch is delivered) and collects the native memory to keep alive.
inline void HoldTargets(Napi::Env env, const std::vector<Target>& targets,
                        std::vector<napi_ref>* borrowed,
                        std::vector<std::shared_ptr<void>>* keepAlive) {
  for (const Target& t : targets) {
    if (t.memory) keepAlive->push_back(t.memory);
    if (t.device) keepAlive->push_back(t.device);
    if (t.js.IsEmpty()) continue;
    napi_ref ref;
    if (napi_create_reference(env, t.js, 1, &ref) != napi_ok) {
      ReleaseTargets(env, borrowed);
      Throw(env, kIo, "cannot reference a target buffer");
    }
    borrowed->push_back(ref);
  }
}

}  // namespace kvtier
