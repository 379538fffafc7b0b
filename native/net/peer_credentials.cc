#include "peer_credentials.h"

#include <sys/socket.h>
#include <sys/types.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "../common/args.h"
#include "../common/errors.h"

namespace kvtier {

Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t fd = ByteCountArg(env, info[0], "socket descriptor");
  if (fd > INT32_MAX) Throw(env, kBadArgument, "socket descriptor is out of range");
  struct ucred cred {};
  socklen_t len = sizeof cred;
  if (getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    int err = errno;
    Throw(env, err == EBADF || err == ENOTSOCK ? kBadArgument : kIo,
          std::string("cannot read the socket peer's credentials: ") + std::strerror(err), err,
          "getsockopt");
  }
  if (len != sizeof cred) Throw(env, kIo, "SO_PEERCRED returned a short answer");
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, cred.pid));
  out.Set("uid", Napi::Number::New(env, cred.uid));
  out.Set("gid", Napi::Number::New(env, cred.gid));
  return out;
}

}  // namespace kvtier
