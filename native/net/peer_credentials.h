// The credentials of the process at the other end of a connected Unix-domain socket.
#pragma once
#include <napi.h>

namespace kvtier {

// peerCredentials(fd) -> { pid, uid, gid }: getsockopt(SO_PEERCRED) on a socket's descriptor (the
// kernel's record of who connected, which the peer cannot forge).
Napi::Value PeerCredentials(const Napi::CallbackInfo& info);

}  // namespace kvtier
