// verbsProbe({ device, port }): brings the verbs endpoint up as far as a queue pair, then tears
// it down, and says how far it got. Transport selection ('auto', 'verbs') asks it, so an explicit
// request names the exact step that failed.
#include "verbs_probe.h"

#include <string>

#include "../common/args.h"
#include "verbs_endpoint.h"

namespace kvtier {

VerbsEndpoint::Options VerbsOptionsArg(Napi::Env env, Napi::Object opts) {
  VerbsEndpoint::Options o;
  o.device = StringOption(opts, "device", "");
  Napi::Value port = opts.Get("port");
  if (!port.IsUndefined()) {
    uint64_t p = ByteCountArg(env, port, "port");
    if (p < 1 || p > 255) Throw(env, kBadArgument, "port must be 1 to 255");
    o.port = static_cast<uint8_t>(p);
  }
  return o;
}

Napi::Value VerbsProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object opts = info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(env);
  VerbsEndpoint::Options o = VerbsOptionsArg(env, opts);
  Napi::Object out = Napi::Object::New(env);
  std::string error;
  std::unique_ptr<VerbsEndpoint> ep = VerbsEndpoint::Open(o, &error);
  std::unique_ptr<VerbsEndpoint::QueuePair> qp;
  // A probe lends nothing: its queue pair grants the peer no access.
  if (ep) qp = ep->CreateQueuePair(0, &error);
  if (!ep || !qp) {
    out.Set("available", Napi::Boolean::New(env, false));
    out.Set("reason", Napi::String::New(env, error));
    return out;
  }
  out.Set("available", Napi::Boolean::New(env, true));
  out.Set("device", Napi::String::New(env, ep->device()));
  out.Set("port", Napi::Number::New(env, ep->port()));
  out.Set("linkLayer", Napi::String::New(env, ep->ethernet() ? "Ethernet" : "InfiniBand"));
  out.Set("lid", Napi::Number::New(env, qp->local().lid));
  return out;
}

}  // namespace kvtier
