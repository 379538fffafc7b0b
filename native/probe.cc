#include "probe.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "common/errors.h"
#include "io/file_handle.h"
#include "io/io_engine.h"
#include "shim/cuda.h"
#include "shim/cufile.h"
#include "shim/ibverbs.h"

#ifndef KVTIER_VERSION
#define KVTIER_VERSION "0.0.0"
#endif

namespace kvtier {

namespace {

Napi::Object Status(Napi::Env env, bool available, const std::string& reason) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("available", Napi::Boolean::New(env, available));
  if (!available) o.Set("reason", Napi::String::New(env, reason.empty() ? "unknown" : reason));
  return o;
}

void SetLibrary(Napi::Object o, const shim::LibStatus& s) {
  Napi::Env env = o.Env();
  o.Set("loaded", Napi::Boolean::New(env, s.loaded));
  if (!s.path.empty()) o.Set("path", Napi::String::New(env, s.path));
  if (!s.version.empty()) o.Set("version", Napi::String::New(env, s.version));
}

Napi::Object CudaStatus(Napi::Env env) {
  shim::Cuda& cuda = shim::Cuda::instance();
  std::string reason = cuda.status().reason;
  if (cuda.status().loaded && cuda.devices().empty() && reason.empty()) {
    reason = "the CUDA driver reports no devices";
  }
  Napi::Object o = Status(env, cuda.usable(), reason);
  SetLibrary(o, cuda.status());
  if (cuda.driverVersion() != 0)
    o.Set("driverVersion", Napi::Number::New(env, cuda.driverVersion()));
  Napi::Array devices = Napi::Array::New(env);
  uint32_t i = 0;
  for (const shim::CudaDevice& d : cuda.devices()) {
    Napi::Object dev = Napi::Object::New(env);
    dev.Set("ordinal", Napi::Number::New(env, d.ordinal));
    dev.Set("name", Napi::String::New(env, d.name));
    dev.Set("pciBusId", Napi::String::New(env, d.pciBusId));
    dev.Set("memoryBytes", Napi::Number::New(env, static_cast<double>(d.totalMemBytes)));
    dev.Set("computeCapability", Napi::String::New(env, std::to_string(d.computeMajor) + "." +
                                                            std::to_string(d.computeMinor)));
    devices.Set(i++, dev);
  }
  o.Set("devices", devices);
  return o;
}

Napi::Object CuFileStatus(Napi::Env env) {
  shim::CuFile& cufile = shim::CuFile::instance();
  Napi::Object o = Status(env, cufile.status().loaded, cufile.status().reason);
  SetLibrary(o, cufile.status());
  if (!cufile.mode().empty()) {
    o.Set("mode", Napi::String::New(env, cufile.mode()));
    o.Set("modeReason", Napi::String::New(env, cufile.modeReason()));
  }
  return o;
}

Napi::Object VerbsStatus(Napi::Env env) {
  shim::Verbs& verbs = shim::Verbs::instance();
  std::string reason = verbs.status().loaded ? verbs.devicesReason() : verbs.status().reason;
  Napi::Object o = Status(env, verbs.usable(), reason);
  SetLibrary(o, verbs.status());
  Napi::Array devices = Napi::Array::New(env);
  uint32_t i = 0;
  for (const shim::VerbsDevice& d : verbs.devices()) {
    Napi::Object dev = Napi::Object::New(env);
    dev.Set("name", Napi::String::New(env, d.name));
    dev.Set("guid", Napi::String::New(env, d.guid));
    dev.Set("transport", Napi::String::New(env, d.transport));
    devices.Set(i++, dev);
  }
  o.Set("devices", devices);
  return o;
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

}  // namespace

Napi::Value Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("addonVersion", Napi::String::New(env, KVTIER_VERSION));
  out.Set("cpus", Napi::Number::New(env, std::thread::hardware_concurrency()));
  out.Set("pageSize", Napi::Number::New(env, static_cast<double>(sysconf(_SC_PAGESIZE))));

  std::string reason;
  bool uring = UringUsable(&reason);
  Napi::Object u = Status(env, uring, reason);
  std::string version = UringVersion();
  u.Set("compiled", Napi::Boolean::New(env, !version.empty()));
  if (!version.empty()) u.Set("liburingVersion", Napi::String::New(env, version));
  out.Set("ioUring", u);
  out.Set("cuda", CudaStatus(env));
  out.Set("cufile", CuFileStatus(env));
  out.Set("ibverbs", VerbsStatus(env));
  return out;
}

Napi::Value ProbeDirect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) Throw(env, kBadArgument, "dir must be a string");
  std::string dir = info[0].As<Napi::String>().Utf8Value();
  std::string templ = dir + "/.kvtier-odirect-XXXXXX";
  int fd = mkstemp(templ.data());
  if (fd < 0) {
    int e = errno;
    return Status(env, false, "cannot create a file in " + dir + ": " + std::strerror(e));
  }
  (void)close(fd);
  struct Unlinker {
    std::string path;
    ~Unlinker() { (void)unlink(path.c_str()); }
  } unlinker{templ};

  OpenOptions options;
  options.direct = FileHandle::DirectMode::kOn;
  OpenError error;
  std::shared_ptr<FileHandle> h = OpenFileHandle(templ, options, &error);
  if (!h) {
    return Status(env, false,
                  error.errnum == EINVAL ? "the filesystem of " + dir + " refuses O_DIRECT (EINVAL)"
                                         : error.message + ": " + std::strerror(error.errnum));
  }
  // A real aligned write and read back: some filesystems accept the flag and fail the I/O.
  size_t len = h->offsetAlign > 4096 ? h->offsetAlign : 4096;
  void* raw = nullptr;
  if (posix_memalign(&raw, len, len) != 0) return Status(env, false, "out of memory");
  std::unique_ptr<void, FreeDeleter> buf(raw);
  std::memset(raw, 0x5a, len);
  ssize_t w = pwrite(h->fd, raw, len, 0);
  if (w != static_cast<ssize_t>(len)) {
    int e = w < 0 ? errno : EIO;
    return Status(env, false, std::string("O_DIRECT write failed: ") + std::strerror(e));
  }
  ssize_t r = pread(h->fd, raw, len, 0);
  if (r != static_cast<ssize_t>(len)) {
    int e = r < 0 ? errno : EIO;
    return Status(env, false, std::string("O_DIRECT read failed: ") + std::strerror(e));
  }
  Napi::Object o = Status(env, true, "");
  o.Set("memAlign", Napi::Number::New(env, h->memAlign));
  o.Set("offsetAlign", Napi::Number::New(env, h->offsetAlign));
  return o;
}

}  // namespace kvtier
