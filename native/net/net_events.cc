#include "net_events.h"

#include <utility>

namespace kvtier {

void EventBatch::Push(NetEvent&& e) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!pending_) pending_ = std::make_unique<NetEvents>();
  pending_->push_back(std::move(e));
}

std::unique_ptr<NetEvents> EventBatch::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::move(pending_);
}

namespace {

Napi::Uint32Array Words(Napi::Env env, const std::vector<uint32_t>& v) {
  Napi::Uint32Array out = Napi::Uint32Array::New(env, v.size());
  for (size_t k = 0; k < v.size(); ++k) out[k] = v[k];
  return out;
}

void FrameFields(Napi::Env env, Napi::Object o, NetEvent& e) {
  o.Set("type", Napi::Number::New(env, e.type));
  o.Set("flags", Napi::Number::New(env, e.flags));
  o.Set("requestId", Napi::Number::New(env, e.requestId));
  o.Set("meta", Napi::Buffer<uint8_t>::Copy(env, e.meta.data(), e.meta.size()));
  o.Set("placed", Napi::Boolean::New(env, e.placed));
  if (e.area >= 0) o.Set("area", Napi::Number::New(env, static_cast<double>(e.area)));
  if (!e.landed.empty()) o.Set("landed", Words(env, e.landed));
  if (e.held > 0) o.Set("held", Napi::Number::New(env, static_cast<double>(e.held)));
  if (!e.checksums.empty()) o.Set("checksums", Words(env, e.checksums));
  o.Set("payloadBytes", Napi::Number::New(env, static_cast<double>(e.payloadBytes)));
  if (e.payload == nullptr) return;
  // Told to the garbage collector, so unreferenced payloads are collected under load.
  auto bytes = static_cast<int64_t>(e.payloadBytes);
  Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::New(
      env, e.payload.get(), e.payloadBytes, [bytes](Napi::Env fenv, uint8_t* d) {
        std::free(d);
        Napi::MemoryManagement::AdjustExternalMemory(fenv, -bytes);
      });
  (void)e.payload.release();  // owned by the Buffer from here (made without throwing)
  Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
  o.Set("payload", buf);
}

}  // namespace

Napi::Array EventsToJs(Napi::Env env, NetEvents& events) {
  Napi::Array list = Napi::Array::New(env, events.size());
  uint32_t i = 0;
  for (NetEvent& e : events) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("kind", Napi::Number::New(env, e.kind));
    o.Set("conn", Napi::Number::New(env, e.conn));
    switch (e.kind) {
      case NetEvent::kAccepted:
      case NetEvent::kRefused:
        o.Set("listener", Napi::Number::New(env, e.listener));
        o.Set("text", Napi::String::New(env, e.text));
        if (e.err != 0) o.Set("errno", Napi::Number::New(env, e.err));
        break;
      case NetEvent::kFrame:
        FrameFields(env, o, e);
        break;
      case NetEvent::kSent:
        o.Set("token", Napi::Number::New(env, e.token));
        break;
      case NetEvent::kClosed:
        o.Set("errno", Napi::Number::New(env, e.err));
        o.Set("text", Napi::String::New(env, e.text));
        break;
      default:
        break;
    }
    list.Set(i++, o);
  }
  return list;
}

}  // namespace kvtier
