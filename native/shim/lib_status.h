// What a runtime loader found: reported by `kvtier info` for every optional library.
#pragma once
#include <string>

namespace kvtier::shim {

struct LibStatus {
  bool loaded = false;  // dlopen and every required dlsym succeeded
  std::string path;     // where the library was found (dlinfo / dladdr), empty when missing
  std::string version;  // library or driver version as text, empty when unknown
  std::string reason;   // why it is missing or unusable, empty when usable
};

}  // namespace kvtier::shim
