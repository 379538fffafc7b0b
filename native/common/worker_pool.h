// Threads that take jobs from one queue: the thread pool engine's I/O threads and io_uring's
// completion threads. Stop() lets them finish every job queued, so each op submitted gets its
// completion, then joins them. Jobs run on the pool's threads; `run` must not throw (no exception
// may cross a thread: one that escaped would end the process).
#pragma once
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace kvtier {

template <typename Job>
class WorkerPool {
 public:
  WorkerPool() = default;
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;
  ~WorkerPool() { Stop(); }

  // Starts `threads` threads running `run` on each job; false with *error (and the threads that
  // did start stopped) when the system refuses one.
  bool Start(unsigned threads, std::function<void(Job&)> run, std::string* error) {
    run_ = std::move(run);
    try {
      threads_.reserve(threads);
      for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
    } catch (const std::exception& e) {
      *error = e.what();
      Stop();
      return false;
    }
    return true;
  }

  void Push(Job job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(job));
    }
    cv_.notify_one();
  }

  // Many jobs for one lock and one wake-up.
  template <typename It>
  void PushAll(It begin, It end) {
    if (begin == end) return;
    size_t n = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (It it = begin; it != end; ++it, ++n) queue_.push_back(*it);
    }
    if (n == 1) {
      cv_.notify_one();
    } else {
      cv_.notify_all();
    }
  }

  // Finishes every queued job, then joins. Idempotent.
  void Stop() {
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

 private:
  void Work() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        // Stopping drains the queue first.
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      run_(job);
    }
  }

  std::function<void(Job&)> run_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stopping_ = false;
};

}  // namespace kvtier
