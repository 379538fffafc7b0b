// io_uring: one kvtier thread owns the ring, keeps up to queueDepth operations in the kernel and
// resubmits the remainder of short transfers. Built only when liburing was present at build time.
#pragma once
#include <string>

#include "io_engine.h"

namespace kvtier {

// Whether this build has io_uring support, and whether the running kernel lets us set up a ring
// (containers and sysctl kernel.io_uring_disabled often forbid it). Fills *reason when not.
bool UringUsable(std::string* reason);
// liburing version compiled in, e.g. "2.3", or "" when built without it.
std::string UringVersion();

// Returns nullptr when built without liburing.
IoEngine* NewUringEngine(unsigned queueDepth);

}  // namespace kvtier
