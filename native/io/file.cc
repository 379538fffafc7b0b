#include "file.h"

#include <sys/file.h>
#include <sys/stat.h>

#include <cerrno>

#include "../common/args.h"
#include "../common/errors.h"
#include "../common/instance_data.h"

namespace kvtier {

Napi::Function File::Define(Napi::Env env) {
  Napi::Function ctor =
      DefineClass(env, "NativeFile",
                  {InstanceAccessor<&File::Path>("path"), InstanceAccessor<&File::Direct>("direct"),
                   InstanceAccessor<&File::DirectReason>("directReason"),
                   InstanceAccessor<&File::MemAlign>("memAlign"),
                   InstanceAccessor<&File::OffsetAlign>("offsetAlign"),
                   InstanceAccessor<&File::Closed>("closed"), InstanceMethod<&File::Size>("size"),
                   InstanceMethod<&File::Close>("close"), InstanceMethod<&File::Lock>("lock")});
  InstanceData::Get(env).fileCtor = Napi::Persistent(ctor);
  return ctor;
}

// new NativeFile(path, { create, truncate, readOnly, direct: 'on'|'off'|'auto', size })
File::File(const Napi::CallbackInfo& info) : Napi::ObjectWrap<File>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) Throw(env, kBadArgument, "path must be a string");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  if (path.empty() || path.find('\0') != std::string::npos) {
    Throw(env, kBadArgument, "path must be a non-empty string without NUL bytes");
  }
  Napi::Object opts = info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env);

  OpenOptions options;
  options.create = BoolOption(opts, "create", false);
  options.truncate = BoolOption(opts, "truncate", false);
  options.readOnly = BoolOption(opts, "readOnly", false);
  std::string direct = StringOption(opts, "direct", "on");
  if (direct == "on") {
    options.direct = FileHandle::DirectMode::kOn;
  } else if (direct == "off") {
    options.direct = FileHandle::DirectMode::kOff;
  } else if (direct == "auto") {
    options.direct = FileHandle::DirectMode::kAuto;
  } else {
    Throw(env, kBadArgument, "direct must be 'on', 'off' or 'auto', got '" + direct + "'");
  }
  Napi::Value size = opts.Get("size");
  if (!size.IsUndefined()) options.size = static_cast<int64_t>(ByteCountArg(env, size, "size"));
  if (options.readOnly && (options.create || options.truncate || options.size >= 0)) {
    Throw(env, kBadArgument, "readOnly cannot be combined with create, truncate or size");
  }

  OpenError error;
  handle_ = OpenFileHandle(path, options, &error);
  if (!handle_) Throw(env, error.code, error.message, error.errnum, error.syscall);
  path_ = path;
  direct_ = handle_->direct;
  directReason_ = handle_->directReason;
  memAlign_ = handle_->direct ? handle_->memAlign : 1;
  offsetAlign_ = handle_->direct ? handle_->offsetAlign : 1;
}

Napi::Value File::Path(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), path_);
}
Napi::Value File::Direct(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), direct_);
}
Napi::Value File::DirectReason(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), directReason_);
}
Napi::Value File::MemAlign(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), memAlign_);
}
Napi::Value File::OffsetAlign(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), offsetAlign_);
}
Napi::Value File::Closed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !handle_);
}

Napi::Value File::Size(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!handle_) Throw(env, kClosed, "file " + path_ + " is closed");
  struct stat st {};
  if (fstat(handle_->fd, &st) != 0) Throw(env, kIo, "cannot stat " + path_, errno, "fstat");
  return Napi::Number::New(env, static_cast<double>(st.st_size));
}

Napi::Value File::Close(const Napi::CallbackInfo& info) {
  // In-flight operations keep their own reference; the descriptor closes after the last one.
  handle_.reset();
  return info.Env().Undefined();
}

}  // namespace kvtier

namespace kvtier {

// lock(): an exclusive advisory lock (flock) held until the file closes, so two processes never
// open the same warehouse directory. Fails with KVTIER_LOCKED when another process holds it.
Napi::Value File::Lock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!handle_) Throw(env, kClosed, "file " + path_ + " is closed");
  int rc;
  do {
    rc = flock(handle_->fd, LOCK_EX | LOCK_NB);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    int e = errno;
    if (e == EWOULDBLOCK) {
      Throw(env, "KVTIER_LOCKED", path_ + " is locked by another process", e, "flock");
    }
    Throw(env, kIo, "cannot lock " + path_, e, "flock");
  }
  return env.Undefined();
}

}  // namespace kvtier
