// A file I/O mechanism running on kvtier's own threads. Engines take ownership of nothing: ops
// live in their batch until CompleteOp hands the batch back.
#pragma once
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

}  // namespace kvtier
