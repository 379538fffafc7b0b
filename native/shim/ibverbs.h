// Runtime loader for RDMA verbs (libibverbs.so.1): lists devices for `kvtier info` and resolves the
// data-path entry points the verbs transport uses (ibverbs_api.h).
#pragma once
#include <string>
#include <vector>

#include "ibverbs_api.h"
#include "lib_status.h"

namespace kvtier::shim {

struct VerbsDevice {
  std::string name;       // e.g. "mlx5_0"
  std::string guid;       // node GUID as hex, may be empty
  std::string transport;  // "InfiniBand", "iWARP", "unknown" ... (from the device struct or sysfs)
};

class Verbs {
 public:
  static Verbs& instance();  // loads once (thread-safe), never throws

  const LibStatus& status() const { return status_; }  // loaded: library and symbols found
  const std::vector<VerbsDevice>& devices() const { return devices_; }
  bool usable() const { return status_.loaded && !devices_.empty(); }
  // Why unusable when loaded but no devices were found.
  const std::string& devicesReason() const { return devicesReason_; }
  // The data-path entry points, or nullptr (apiReason() says why) when the library lacks one.
  const ibv::Api* api() const { return apiLoaded_ ? &api_ : nullptr; }
  const std::string& apiReason() const { return apiReason_; }

 private:
  Verbs();
  LibStatus status_;
  std::vector<VerbsDevice> devices_;
  std::string devicesReason_;
  ibv::Api api_{};
  bool apiLoaded_ = false;
  std::string apiReason_;
  void* lib_ = nullptr;
};

}  // namespace kvtier::shim
