// Runtime loader for NVIDIA cuFile (GPUDirect Storage, libcufile.so.0). This issue only loads and
// probes it; later ones drive I/O through it.
#pragma once
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

 private:
  CuFile();
  LibStatus status_;
  std::string mode_;
  std::string modeReason_;
  void* lib_ = nullptr;
};

}  // namespace kvtier::shim
