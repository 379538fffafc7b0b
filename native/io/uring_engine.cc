#include "../common/crc32c.h"
#include "../common/worker_pool.h"
#include "io_engine.h"

#ifdef KVTIER_HAVE_LIBURING

#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace kvtier {

namespace {

// Runs the completion work of finished ops (copying out of bounce buffers, checksums) on threads
// of its own, so the ring thread goes straight back to reaping and submitting: a checksum of a
// freshly read megabyte costs tens of microseconds of memory bandwidth, enough to leave the queue
// half empty if the ring thread did it.
class Finisher {
 public:
  bool Start(unsigned threads, std::string* error) {
    if (pool_.Start(
            threads, [](Job& job) { Finish(job); }, error))
      return true;
    *error = "cannot start completion threads: " + *error;
    return false;
  }

  // Hands over every op of one pass of the ring loop at once: one lock and one wake-up per pass,
  // not per op (a futex wake per 256 KiB block was a third of the ring thread's time in a
  // Warehouse put profile). `checksumOnly`: the ops are writes whose source bytes are to be
  // checksummed while the kernel writes them; otherwise they are finished ops to complete.
  void PushAll(std::vector<Op*>* ops, bool checksumOnly = false) {
    if (ops->empty()) return;
    jobs_.clear();
    for (Op* op : *ops) jobs_.push_back({op, checksumOnly});
    pool_.PushAll(jobs_.begin(), jobs_.end());
    ops->clear();
  }

  // Completes everything queued, then joins.
  void Stop() { pool_.Stop(); }

 private:
  struct Job {
    Op* op = nullptr;
    bool checksumOnly = false;
  };

  static void Finish(Job& job) {
    if (job.checksumOnly) {
      Op* op = job.op;
      op->crc = Crc32c(0, op->mem, op->len);
      op->crcDone = true;
      // The write may still be in the kernel: whichever part ends last completes the op.
      if (__atomic_sub_fetch(&op->parts, 1, __ATOMIC_ACQ_REL) == 0) CompleteOp(*op);
    } else {
      CompleteOp(*job.op);
    }
  }

  WorkerPool<Job> pool_;
  std::vector<Job> jobs_;  // the ring thread's only: reused between passes
};

class UringEngine final : public IoEngine {
 public:
  explicit UringEngine(unsigned depth) : depth_(depth) {}
  ~UringEngine() override {
    Stop();
    finisher_.Stop();
    if (ringReady_) io_uring_queue_exit(&ring_);
    if (wakeFd_ >= 0) (void)close(wakeFd_);
  }

  bool Start(std::string* error) override {
    // One extra entry for the wake-up read that lets Submit() interrupt a wait.
    int rc = io_uring_queue_init(depth_ + 1, &ring_, 0);
    if (rc < 0) {
      *error = std::string("io_uring_queue_init failed: ") + std::strerror(-rc);
      return false;
    }
    ringReady_ = true;
    if (!finisher_.Start(kFinisherThreads, error)) return false;
    wakeFd_ = eventfd(0, EFD_CLOEXEC);
    if (wakeFd_ < 0) {
      *error = std::string("eventfd failed: ") + std::strerror(errno);
      return false;
    }
    try {
      thread_ = std::thread([this] { Run(); });
    } catch (const std::system_error& e) {
      *error = std::string("cannot start the io_uring thread: ") + e.what();
      return false;
    }
    return true;
  }

  void Submit(const std::vector<Op*>& ops) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      incoming_.insert(incoming_.end(), ops.begin(), ops.end());
    }
    Wake();
  }

  void Stop() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_ && !thread_.joinable()) return;
      stopping_ = true;
    }
    Wake();
    if (thread_.joinable()) thread_.join();
    finisher_.Stop();  // after the ring: every op the ring finished gets completed
  }

 private:
  static constexpr unsigned kFinisherThreads = 2;

  void Wake() {
    uint64_t one = 1;
    // eventfd writes only fail on counter overflow, which a pending wake-up already covers.
    while (write(wakeFd_, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }

  bool ArmWake() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return false;
    io_uring_prep_read(sqe, wakeFd_, &wakeBuf_, sizeof wakeBuf_, 0);
    io_uring_sqe_set_data(sqe, &wakeBuf_);
    wakeArmed_ = true;
    return true;
  }

  // Queues the next piece of an op; false when the ring has no free entry.
  bool Prepare(Op* op) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return false;
    if (op->kind == OpKind::kSync) {
      io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
    } else {
      uint8_t* buf = (op->bounce != nullptr ? op->bounce : op->mem) + op->done;
      unsigned chunk = static_cast<unsigned>(std::min(op->len - op->done, kMaxChunk));
      uint64_t pos = op->offset + op->done;
      if (op->kind == OpKind::kRead) {
        io_uring_prep_read(sqe, op->fd, buf, chunk, pos);
      } else {
        io_uring_prep_write(sqe, op->fd, buf, chunk, pos);
      }
    }
    io_uring_sqe_set_data(sqe, op);
    ++inflight_;
    return true;
  }

  void Finish(Op* op) {
    if (op->crcBeside) {
      // A write whose checksum runs beside it: the finisher may still be reading its bytes, and
      // whichever part ends last completes the op (cheap now: the checksum is done).
      if (__atomic_sub_fetch(&op->parts, 1, __ATOMIC_ACQ_REL) == 0) CompleteOp(*op);
      return;
    }
    if ((op->wantCrc || op->bounce != nullptr) && op->err == 0 && op->done > 0) {
      toFinish_.push_back(op);
    } else {
      CompleteOp(*op);
    }
  }

  void HandleCompletion(io_uring_cqe* cqe) {
    void* data = io_uring_cqe_get_data(cqe);
    if (data == &wakeBuf_) {
      wakeArmed_ = false;
      return;  // re-armed by the loop unless stopping
    }
    Op* op = static_cast<Op*>(data);
    --inflight_;
    int res = cqe->res;
    if (res < 0) {
      if (res == -EINTR || res == -EAGAIN) {
        backlog_.push_front(op);
      } else {
        op->err = -res;
        Finish(op);
      }
      return;
    }
    if (op->kind == OpKind::kSync) return Finish(op);
    if (res == 0) {
      if (op->kind == OpKind::kWrite) op->err = EIO;  // no progress, and none to come
      return Finish(op);
    }
    uint64_t asked = std::min(op->len - op->done, kMaxChunk);
    op->done += static_cast<uint64_t>(res);
    bool shortRead = op->kind == OpKind::kRead && static_cast<uint64_t>(res) < asked;
    if (op->done >= op->len || (shortRead && ShortReadEnds(*op))) return Finish(op);
    backlog_.push_front(op);  // short transfer: the rest goes next
  }

  void Run() {
    bool stopping = false;
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        backlog_.insert(backlog_.end(), incoming_.begin(), incoming_.end());
        incoming_.clear();
        stopping = stopping_;
      }
      if (!wakeArmed_ && !stopping) (void)ArmWake();
      while (!backlog_.empty() && inflight_ < depth_) {
        Op* op = backlog_.front();
        if (op->kind == OpKind::kCopy || op->kind == OpKind::kChecksum) {
          // Memory work has no kernel side: do it here, between submissions.
          backlog_.pop_front();
          ExecuteMemoryOp(*op);
          Finish(op);
          continue;
        }
        if (!AcquireBounce(*op)) {
          backlog_.pop_front();
          Finish(op);
          continue;
        }
        if (op->kind == OpKind::kWrite && op->wantCrc && !op->crcBeside) {
          // Checksum the source while the kernel writes it, rather than after: the op's
          // latency stays that of the write alone. Handed over below, with the pass's others.
          op->crcBeside = true;
          op->parts = 2;
          toChecksum_.push_back(op);
        }
        if (!Prepare(op)) break;
        backlog_.pop_front();
      }
      // The kernel gets the new requests before the finisher threads are woken: on a machine
      // with few cores a woken finisher can take this thread's core, and the ring would sit
      // with free entries while it checksums (a 256 KiB put pass lost several percent so).
      if (io_uring_sq_ready(&ring_) > 0 && (!toChecksum_.empty() || !toFinish_.empty())) {
        (void)io_uring_submit(&ring_);  // a failure leaves them queued for the submit below
      }
      finisher_.PushAll(&toChecksum_, true);
      // Exit only once the armed wake-up read has completed, so the kernel never writes into
      // wakeBuf_ after the engine is gone. Stop() always writes the eventfd, so it does complete.
      // Ops finished in the last completion pass, or outside one (memory work, failures), go out
      // before any wait.
      finisher_.PushAll(&toFinish_);
      if (stopping && inflight_ == 0 && backlog_.empty() && !wakeArmed_) break;

      int rc = io_uring_submit_and_wait(&ring_, 1);
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
        // The ring itself failed: fail what is queued rather than spin.
        FailQueued(-rc);
      }
      unsigned head;
      unsigned seen = 0;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        HandleCompletion(cqe);
        ++seen;
      }
      io_uring_cq_advance(&ring_, seen);
      // toFinish_ goes out at the top of the next pass, once the freed entries are refilled.
    }
  }

  void FailQueued(int err) {
    while (!backlog_.empty()) {
      Op* op = backlog_.front();
      backlog_.pop_front();
      op->err = err;
      Finish(op);
    }
  }

  unsigned depth_;
  io_uring ring_{};
  bool ringReady_ = false;
  int wakeFd_ = -1;
  uint64_t wakeBuf_ = 0;
  bool wakeArmed_ = false;
  std::thread thread_;
  std::mutex mu_;
  std::deque<Op*> incoming_;  // guarded by mu_
  bool stopping_ = false;     // guarded by mu_
  std::deque<Op*> backlog_;   // ring thread only
  unsigned inflight_ = 0;     // ring thread only
  Finisher finisher_;
  std::vector<Op*> toFinish_;    // ring thread only: finished ops waiting for the finisher
  std::vector<Op*> toChecksum_;  // ring thread only: writes whose checksum is yet to be handed over
};

}  // namespace

bool UringUsable(std::string* reason) {
  io_uring ring{};
  int rc = io_uring_queue_init(2, &ring, 0);
  if (rc < 0) {
    *reason = std::string("io_uring_queue_init failed: ") + std::strerror(-rc);
    std::ifstream sysctl("/proc/sys/kernel/io_uring_disabled");
    int disabled = 0;
    if (sysctl >> disabled && disabled != 0) {
      *reason += " (kernel.io_uring_disabled=" + std::to_string(disabled) + ")";
    } else if (rc == -EPERM || rc == -ENOSYS) {
      *reason += " (blocked by the kernel or a seccomp profile, as in many containers)";
    }
    return false;
  }
  io_uring_queue_exit(&ring);
  return true;
}

std::string UringVersion() {
#if defined(IO_URING_VERSION_MAJOR) && defined(IO_URING_VERSION_MINOR)
  return std::to_string(IO_URING_VERSION_MAJOR) + "." + std::to_string(IO_URING_VERSION_MINOR);
#else
  return "<2.4";  // liburing defines its version macros from 2.4 on
#endif
}

std::unique_ptr<IoEngine> NewUringEngine(unsigned queueDepth) {
  return std::make_unique<UringEngine>(queueDepth);
}

}  // namespace kvtier

#else  // !KVTIER_HAVE_LIBURING

namespace kvtier {

bool UringUsable(std::string* reason) {
  *reason = "kvtier was built without liburing (install liburing-dev and rebuild)";
  return false;
}
std::string UringVersion() { return ""; }
std::unique_ptr<IoEngine> NewUringEngine(unsigned) { return nullptr; }

}  // namespace kvtier

#endif
