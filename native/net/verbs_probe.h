// JavaScript face of the verbs endpoint's bring-up (verbs_endpoint.h).
#pragma once
#include <napi.h>

#include "verbs_endpoint.h"

namespace kvtier {

Napi::Value VerbsProbe(const Napi::CallbackInfo& info);

// The endpoint options JavaScript may give ({ device, port }), checked; throws on bad ones.
VerbsEndpoint::Options VerbsOptionsArg(Napi::Env env, Napi::Object opts);

}  // namespace kvtier
