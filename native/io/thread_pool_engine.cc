#include "thread_pool_engine.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

namespace kvtier {

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

bool ThreadPoolEngine::Start(std::string* error) {
  try {
    threads_.reserve(threadCount_);
    for (unsigned i = 0; i < threadCount_; ++i) threads_.emplace_back([this] { Work(); });
  } catch (const std::system_error& e) {
    *error = std::string("cannot start I/O threads: ") + e.what();
    Stop();
    return false;
  }
  return true;
}

void ThreadPoolEngine::Submit(const std::vector<Op*>& ops) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.insert(queue_.end(), ops.begin(), ops.end());
  }
  if (ops.size() == 1) {
    cv_.notify_one();
  } else {
    cv_.notify_all();
  }
}

void ThreadPoolEngine::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

void ThreadPoolEngine::Work() {
  for (;;) {
    Op* op;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      // Stopping drains the queue first, so every op submitted gets its completion.
      if (queue_.empty()) return;
      op = queue_.front();
      queue_.pop_front();
    }
    ExecuteBlocking(*op);
    CompleteOp(*op);
  }
}

}  // namespace kvtier
