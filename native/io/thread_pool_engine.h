// pread/pwrite on a fixed set of kvtier-owned threads: the engine that works everywhere.
#pragma once
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "io_engine.h"

namespace kvtier {

class ThreadPoolEngine final : public IoEngine {
 public:
  explicit ThreadPoolEngine(unsigned threads) : threadCount_(threads) {}
  ~ThreadPoolEngine() override { Stop(); }

  bool Start(std::string* error) override;
  void Submit(const std::vector<Op*>& ops) override;
  void Stop() override;

 private:
  void Work();

  unsigned threadCount_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Op*> queue_;
  bool stopping_ = false;
};

// Runs one op to completion with blocking system calls (retrying EINTR and short transfers).
void ExecuteBlocking(Op& op);

}  // namespace kvtier
