// JavaScript face of the verbs endpoint's bring-up (verbs_endpoint.h).
#pragma once
#include <napi.h>

namespace kvtier {

Napi::Value VerbsProbe(const Napi::CallbackInfo& info);

}  // namespace kvtier
