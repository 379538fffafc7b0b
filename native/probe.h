// What this machine offers kvtier: read by `kvtier info` and by the engine chooser.
#pragma once
#include <napi.h>

namespace kvtier {

// probe() -> { addonVersion, cpus, pageSize, ioUring, cuda, cufile, ibverbs }
Napi::Value Probe(const Napi::CallbackInfo& info);
// probeDirect(dir) -> { available, reason?, memAlign, offsetAlign }: really opens, writes and
// reads a file with O_DIRECT in dir, then removes it.
Napi::Value ProbeDirect(const Napi::CallbackInfo& info);

}  // namespace kvtier
