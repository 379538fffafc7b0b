// The lifecycle every native object with threads of its own shares (Engine, CopyEngine,
// GpuFileEngine, VerbsLink, TcpTransport), written once: the thread-safe function its threads
// report through, the environment cleanup hook, the closed flag, the in-flight reference that
// keeps the process alive while work is out, and the one shutdown path.
//
// Held as a member, declared after the owner's Tsfn alias (a base class could not name
// &Owner::Deliver while Owner is incomplete). The owner
//   - calls Begin() in its constructor before any thread of its can call the function,
//   - calls Shutdown() from close() and first thing in its destructor (StopWork is the owner's own
//     and needs the owner whole),
//   - calls Busy()/Idle() around work that must keep the process alive.
//
// Release or Abort. close() runs while JavaScript does: the function is released, so whatever the
// threads queued before they were joined is still delivered with a live environment (promises
// settle, events arrive), and the function is finalized after them. The environment's cleanup
// hook runs when JavaScript can no longer run (process exit, worker termination): there the
// function is aborted, so nothing waits on a call into JavaScript, and Node hands each queued item
// to the owner's callback with a null environment, which frees it without touching JavaScript.
// TcpTransport used to release from its cleanup hook as well; that left its queued event batches
// waiting on a loop that no longer turns. Every owner's callback handles the null environment.
#pragma once
#include <napi.h>

#include <cstddef>
#include <exception>
#include <functional>
#include <utility>

#include "errors.h"

namespace kvtier {

template <typename Tsfn>
class ThreadedObject {
 public:
  ThreadedObject() = default;
  ThreadedObject(const ThreadedObject&) = delete;
  ThreadedObject& operator=(const ThreadedObject&) = delete;

  // Only a constructor that threw leaves a function here unreleased: no thread of the owner ran
  // (or the owner stopped them before it threw), so releasing it is safe.
  ~ThreadedObject() {
    if (!closed_) {
      closed_ = true;
      LetGo(false);
    }
    Unhook();
  }

  // Takes the function (unreferenced: an idle object must not keep the process alive) and
  // registers the cleanup hook. `stop` joins the owner's threads, finishing or failing what they
  // hold, and frees what they used; it runs once, on the main thread, before the function is let
  // go. Throws KVTIER_IO when the hook cannot be registered.
  void Begin(Napi::Env env, Tsfn tsfn, std::function<void()> stop) {
    env_ = env;
    tsfn_ = std::move(tsfn);
    made_ = true;
    stop_ = std::move(stop);
    tsfn_.Unref(env);
    if (napi_add_env_cleanup_hook(env, OnCleanup, this) != napi_ok) {
      Throw(env, kIo, "cannot register an environment cleanup hook");
    }
    hooked_ = true;
  }

  // close() and the owner's destructor: idempotent.
  void Shutdown() { Finish(false); }

  bool closed() const { return closed_; }
  // For the owner's threads (NonBlockingCall); valid until Shutdown has joined them.
  Tsfn& tsfn() { return tsfn_; }

  // Work that must keep the process alive (batches out, a listener, answers awaited) starts and
  // ends here; main thread only. Idle() may run in the function's callback, so it never throws.
  void Busy(Napi::Env env) {
    if (busy_++ == 0 && !closed_ && made_) tsfn_.Ref(env);
  }
  void Idle(Napi::Env env) {
    if (busy_ == 0 || --busy_ > 0 || closed_ || !made_) return;
    // Fails only for a function already closing, which keeps nothing alive either.
    if (napi_unref_threadsafe_function(env, static_cast<napi_threadsafe_function>(tsfn_)) !=
        napi_ok) {
      return;
    }
  }
  size_t busy() const { return busy_; }

 private:
  static void OnCleanup(void* arg) {
    auto* self = static_cast<ThreadedObject*>(arg);
    self->hooked_ = false;  // Node drops the hook as it calls it
    self->Finish(true);
  }

  void Finish(bool abort) {
    if (closed_) return;
    closed_ = true;
    if (stop_) {
      // Called from a destructor and a cleanup hook: nothing may escape. Owners throw nothing
      // here but allocation failures, after which their threads are joined all the same.
      try {
        stop_();
      } catch (const std::exception&) {
      }
    }
    LetGo(abort);
  }

  void LetGo(bool abort) {
    if (!made_) return;
    made_ = false;
    napi_status s = abort ? tsfn_.Abort() : tsfn_.Release();
    // napi_closing or napi_invalid_arg: the environment closed the function first, which is the
    // state this call asks for.
    if (s != napi_ok) return;
  }

  void Unhook() {
    if (!hooked_) return;
    hooked_ = false;
    // Fails only for a hook Node already dropped; nothing is left to undo.
    if (napi_remove_env_cleanup_hook(env_, OnCleanup, this) != napi_ok) return;
  }

  Tsfn tsfn_;
  std::function<void()> stop_;
  napi_env env_ = nullptr;
  size_t busy_ = 0;
  bool made_ = false;
  bool closed_ = false;
  bool hooked_ = false;
};

}  // namespace kvtier
