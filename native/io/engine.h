// JavaScript face of an IoEngine: takes one descriptor batch per call and resolves one promise
// with a status per descriptor, through a thread-safe function.
#pragma once
#include <napi.h>

#include <memory>
#include <string>

#include "../common/threaded_object.h"
#include "io_engine.h"

namespace kvtier {

class Engine : public Napi::ObjectWrap<Engine>, public CompletionSink {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Engine(const Napi::CallbackInfo& info);
  ~Engine() override;

  void Post(Batch* batch) override;  // engine threads

 private:
  struct JsBatch;
  static void Deliver(Napi::Env env, Napi::Function, Engine* engine, Batch* batch);

  Napi::Value Submit(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Kind(const Napi::CallbackInfo& info);
  Napi::Value QueueDepth(const Napi::CallbackInfo& info);
  Napi::Value InFlight(const Napi::CallbackInfo& info);

  void Finished(Napi::Env env);

  using Tsfn = Napi::TypedThreadSafeFunction<Engine, Batch, &Engine::Deliver>;
  std::unique_ptr<IoEngine> io_;
  std::string kind_;
  unsigned queueDepth_ = 0;
  // Its busy count is the batches submitted and not yet delivered (main thread only).
  ThreadedObject<Tsfn> life_;
};

}  // namespace kvtier
