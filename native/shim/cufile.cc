#include "cufile.h"

#include <sys/stat.h>

#include <cstdlib>
#include <exception>
#include <string>

#include "cuda.h"
#include "dl_handle.h"

namespace kvtier::shim {

namespace {

// cuFile's status type as NVIDIA documents it (struct CUfileError: a CUfileOpError and a
// CUresult, both C enums). Declared here so the addon builds without cufile.h; it must stay a
// trivial C struct so it is returned by value exactly as the C library returns it.
struct CuFileError {
  int err;
  int cuErr;
};
constexpr int kCuFileSuccess = 0;
using CuFileGetVersionFn = CuFileError (*)(int* version);

constexpr char kDefaultSoname[] = "libcufile.so.0";

bool Exists(const char* path) {
  struct stat st;
  return stat(path, &st) == 0;
}

// cuFileGetVersion reports 1000 * major + 10 * minor + patch (1.7.0 is 1070).
std::string FormatVersion(int v) {
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10) + "." +
         std::to_string(v % 10);
}

}  // namespace

CuFile& CuFile::instance() {
  // Leaked on purpose, like Cuda: later I/O engines may still use it from their own threads while
  // the process exits.
  static CuFile* cufile = new CuFile();
  return *cufile;
}

CuFile::CuFile() {
  try {
    // An explicit KVTIER_CUFILE_PATH is a request, not a hint: if it cannot be loaded we say so
    // rather than quietly picking up some other libcufile from the default loader path.
    std::string candidate = kDefaultSoname;
    const char* env = std::getenv("KVTIER_CUFILE_PATH");
    bool fromEnv = env != nullptr && env[0] != '\0';
    if (fromEnv) {
      candidate = env;
      struct stat st;
      if (stat(env, &st) == 0 && S_ISDIR(st.st_mode)) {
        candidate += std::string("/") + kDefaultSoname;
      }
    }

    detail::DlHandle lib;
    std::string why;
    if (!lib.open(candidate, &why)) {
      status_.reason =
          fromEnv ? "KVTIER_CUFILE_PATH=" + std::string(env) + " could not be loaded: " + why : why;
      return;
    }
    status_.path = lib.realPath();

    // The core set later issues drive I/O through; only presence is checked here, and the driver
    // is not opened, because cuFileDriverOpen is slow and claims GPU resources.
    static const char* const kRequired[] = {
        "cuFileDriverOpen",  "cuFileHandleRegister", "cuFileHandleDeregister",
        "cuFileBufRegister", "cuFileBufDeregister",  "cuFileRead",
        "cuFileWrite",
    };
    void* fn = nullptr;
    for (const char* name : kRequired) {
      if (!lib.sym(name, &fn, &status_.reason)) return;
    }
    // cufile.h maps cuFileDriverClose to cuFileDriverClose_v2 since cuFile 1.4; older libraries
    // export only the unversioned name.
    if (!lib.optionalSym("cuFileDriverClose_v2", &fn) &&
        !lib.sym("cuFileDriverClose", &fn, &status_.reason)) {
      status_.reason = "missing symbol cuFileDriverClose_v2 (or cuFileDriverClose)";
      return;
    }

    // Only newer releases export cuFileGetVersion; without it the version is simply unknown.
    CuFileGetVersionFn getVersion = nullptr;
    if (lib.optionalSym("cuFileGetVersion", &getVersion)) {
      int v = 0;
      CuFileError rc = getVersion(&v);
      if (rc.err == kCuFileSuccess && v > 0) status_.version = FormatVersion(v);
    }
    lib_ = lib.release();
    status_.loaded = true;

    if (Exists("/sys/module/nvidia_fs") || Exists("/proc/driver/nvidia-fs/version")) {
      mode_ = "gds";
      modeReason_ = "nvidia-fs kernel module loaded; cuFile can DMA between storage and GPU memory";
    } else {
      mode_ = "compat";
      modeReason_ =
          "nvidia-fs kernel module not loaded; cuFile runs in compatibility mode (POSIX I/O "
          "through bounce buffers)";
    }
    const Cuda& cuda = Cuda::instance();
    if (!cuda.usable()) {
      const std::string& cudaWhy = cuda.status().reason;
      modeReason_ += "; libcuda is not usable (" + (cudaWhy.empty() ? "no CUDA device" : cudaWhy) +
                     "), and cuFile needs a CUDA driver to do I/O";
    }
  } catch (const std::exception& e) {
    status_.loaded = false;
    status_.reason = std::string("probing libcufile failed: ") + e.what();
  }
}

}  // namespace kvtier::shim
