// Runtime loader for NVIDIA cuFile (GPUDirect Storage, libcufile.so.0): probes it for `kvtier
// info`, and drives I/O between files and GPU memory for the GPU file engine.
#pragma once
#include <sys/types.h>

#include <mutex>
#include <string>

#include "lib_status.h"

namespace kvtier::shim {

class CuFile {
 public:
  // Loads once (thread-safe), never throws. Search order: $KVTIER_CUFILE_PATH (a file, or a
  // directory holding libcufile.so.0), then the default loader path.
  static CuFile& instance();

  const LibStatus& status() const { return status_; }
  // "gds" when the nvidia-fs kernel module is present (true GPUDirect), "compat" when cuFile would
  // run its POSIX compatibility mode, "" when not loaded.
  const std::string& mode() const { return mode_; }
  // Why this mode (e.g. "nvidia-fs kernel module not loaded").
  const std::string& modeReason() const { return modeReason_; }

  // Opens the cuFile driver once per process (slow: it claims GPU resources, so only the first
  // GPU file engine pays). Needs a CUDA context current on the calling thread.
  bool driverOpen(std::string* why);
  // Registers an open file descriptor; *handle is what read and write take.
  bool handleRegister(int fd, void** handle, std::string* why);
  void handleDeregister(void* handle);
  bool bufRegister(void* devPtr, size_t bytes);
  void bufDeregister(void* devPtr);
  // Bytes moved, or a negative errno (cuFile's own failures map to -EIO, with *why set).
  ssize_t read(void* handle, void* devBase, size_t bytes, off_t fileOffset, off_t devOffset,
               std::string* why);
  ssize_t write(void* handle, const void* devBase, size_t bytes, off_t fileOffset, off_t devOffset,
                std::string* why);

 private:
  CuFile();
  LibStatus status_;
  std::string mode_;
  std::string modeReason_;
  void* lib_ = nullptr;
  struct Fns;
  Fns* fns_ = nullptr;
  std::mutex openMutex_;
  int opened_ = 0;  // 0 not tried, 1 open, -1 failed (openError_ says why)
  std::string openError_;
};

}  // namespace kvtier::shim
