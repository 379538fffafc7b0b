// The thread pool engine: pread/pwrite on a fixed set of kvtier-owned threads.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "../common/worker_pool.h"
#include "io_engine.h"

namespace kvtier {

namespace {

// Runs one op to completion with blocking system calls (retrying EINTR and short transfers).
void ExecuteBlocking(Op& op) {
  if (op.kind == OpKind::kSync) {
    while (fdatasync(op.fd) != 0) {
      if (errno != EINTR) {
        op.err = errno;
        break;
      }
    }
    return;
  }
  if (op.kind == OpKind::kCopy || op.kind == OpKind::kChecksum) return ExecuteMemoryOp(op);
  if (!AcquireBounce(op)) return;
  uint8_t* buf = op.bounce != nullptr ? op.bounce : op.mem;
  while (op.done < op.len) {
    size_t chunk = static_cast<size_t>(std::min(op.len - op.done, kMaxChunk));
    off_t pos = static_cast<off_t>(op.offset + op.done);
    ssize_t n = op.kind == OpKind::kRead ? pread(op.fd, buf + op.done, chunk, pos)
                                         : pwrite(op.fd, buf + op.done, chunk, pos);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      op.err = errno;
      break;
    }
    if (n == 0) {
      // A read of 0 bytes is end of file; a write of 0 bytes makes no progress and never will.
      if (op.kind == OpKind::kWrite) op.err = EIO;
      break;
    }
    op.done += static_cast<uint64_t>(n);
    if (op.kind == OpKind::kRead && static_cast<size_t>(n) < chunk && ShortReadEnds(op)) break;
  }
}

class ThreadPoolEngine final : public IoEngine {
 public:
  explicit ThreadPoolEngine(unsigned threads) : threadCount_(threads) {}
  ~ThreadPoolEngine() override { Stop(); }

  bool Start(std::string* error) override {
    bool ok = pool_.Start(
        threadCount_,
        [](Op*& op) {
          ExecuteBlocking(*op);
          CompleteOp(*op);
        },
        error);
    if (!ok) *error = "cannot start I/O threads: " + *error;
    return ok;
  }

  void Submit(const std::vector<Op*>& ops) override { pool_.PushAll(ops.begin(), ops.end()); }
  void Stop() override { pool_.Stop(); }

 private:
  unsigned threadCount_;
  WorkerPool<Op*> pool_;
};

}  // namespace

std::unique_ptr<IoEngine> NewThreadPoolEngine(unsigned threads) {
  return std::make_unique<ThreadPoolEngine>(threads);
}

}  // namespace kvtier
