// A file I/O mechanism running on kvtier's own threads. Engines take ownership of nothing: ops
// live in their batch until CompleteOp hands the batch back.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "op.h"

namespace kvtier {

class IoEngine {
 public:
  virtual ~IoEngine() = default;
  // Starts the engine's threads; false with *error when the mechanism cannot run here.
  virtual bool Start(std::string* error) = 0;
  // Queues ops; never blocks on I/O. Thread-safe.
  virtual void Submit(const std::vector<Op*>& ops) = 0;
  // Finishes every queued and in-flight op, then joins the threads. Idempotent.
  virtual void Stop() = 0;
};

// The two mechanisms. Both are started by the caller (Start) and stopped by their destructor.
// pread/pwrite on `threads` kvtier-owned threads: the engine that works everywhere.
std::unique_ptr<IoEngine> NewThreadPoolEngine(unsigned threads);
// io_uring: one kvtier thread owns the ring, keeps up to queueDepth operations in the kernel and
// resubmits the remainder of short transfers. nullptr when built without liburing.
std::unique_ptr<IoEngine> NewUringEngine(unsigned queueDepth);

// Whether this build has io_uring support, and whether the running kernel lets us set up a ring
// (containers and sysctl kernel.io_uring_disabled often forbid it). Fills *reason when not.
bool UringUsable(std::string* reason);
// liburing version compiled in, e.g. "2.3", or "" when built without it.
std::string UringVersion();

}  // namespace kvtier
