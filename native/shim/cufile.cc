#include "cufile.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <exception>
#include <memory>
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

// CUfileDescr_t: the handle type (1: a Linux file descriptor), a union of fd and a pointer, and
// the file-system operations table (null for kernel file systems).
struct CuFileDescr {
  int type;
  union {
    int fd;
    void* handle;
  } handle;
  const void* fsOps;
};
constexpr int kHandleTypeOpaqueFd = 1;

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

std::string Describe(const char* call, CuFileError rc) {
  return std::string(call) + " failed: cuFile error " + std::to_string(rc.err) +
         (rc.cuErr != 0 ? ", CUDA error " + std::to_string(rc.cuErr) : "");
}

}  // namespace

struct CuFile::Fns {
  CuFileError (*driverOpen)() = nullptr;
  CuFileError (*handleRegister)(void** fh, CuFileDescr* descr) = nullptr;
  void (*handleDeregister)(void* fh) = nullptr;
  CuFileError (*bufRegister)(const void* ptr, size_t bytes, int flags) = nullptr;
  CuFileError (*bufDeregister)(const void* ptr) = nullptr;
  ssize_t (*read)(void* fh, void* base, size_t bytes, off_t fileOffset, off_t devOffset) = nullptr;
  ssize_t (*write)(void* fh, const void* base, size_t bytes, off_t fileOffset,
                   off_t devOffset) = nullptr;
};

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

    // Only presence is checked here; the driver is opened by the first GPU file engine, because
    // cuFileDriverOpen is slow and claims GPU resources.
    auto fns = std::make_unique<Fns>();
    if (!lib.sym("cuFileDriverOpen", &fns->driverOpen, &status_.reason) ||
        !lib.sym("cuFileHandleRegister", &fns->handleRegister, &status_.reason) ||
        !lib.sym("cuFileHandleDeregister", &fns->handleDeregister, &status_.reason) ||
        !lib.sym("cuFileBufRegister", &fns->bufRegister, &status_.reason) ||
        !lib.sym("cuFileBufDeregister", &fns->bufDeregister, &status_.reason) ||
        !lib.sym("cuFileRead", &fns->read, &status_.reason) ||
        !lib.sym("cuFileWrite", &fns->write, &status_.reason)) {
      return;
    }
    // cufile.h maps cuFileDriverClose to cuFileDriverClose_v2 since cuFile 1.4; older libraries
    // export only the unversioned name.
    void* fn = nullptr;
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
    fns_ = fns.release();
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

bool CuFile::driverOpen(std::string* why) {
  std::lock_guard<std::mutex> lock(openMutex_);
  if (opened_ == 0) {
    if (!status_.loaded) {
      opened_ = -1;
      openError_ = "cuFile is not available: " + status_.reason;
    } else {
      CuFileError rc = fns_->driverOpen();
      opened_ = rc.err == kCuFileSuccess ? 1 : -1;
      if (opened_ < 0) openError_ = Describe("cuFileDriverOpen", rc);
    }
  }
  if (opened_ < 0) *why = openError_;
  return opened_ == 1;
}

bool CuFile::handleRegister(int fd, void** handle, std::string* why) {
  if (!driverOpen(why)) return false;
  CuFileDescr descr{};
  descr.type = kHandleTypeOpaqueFd;
  descr.handle.fd = fd;
  descr.fsOps = nullptr;
  CuFileError rc = fns_->handleRegister(handle, &descr);
  if (rc.err != kCuFileSuccess) {
    *why = Describe("cuFileHandleRegister", rc);
    return false;
  }
  return true;
}

void CuFile::handleDeregister(void* handle) {
  if (fns_ != nullptr && handle != nullptr) fns_->handleDeregister(handle);
}

bool CuFile::bufRegister(void* devPtr, size_t bytes) {
  std::string why;
  if (!driverOpen(&why)) return false;
  return fns_->bufRegister(devPtr, bytes, 0).err == kCuFileSuccess;
}

void CuFile::bufDeregister(void* devPtr) {
  if (fns_ != nullptr) (void)fns_->bufDeregister(devPtr);
}

namespace {
// cuFileRead/Write return -1 with errno for file-system errors and other negative values for
// cuFile's own; both become a negative errno the engines report like any I/O error.
ssize_t Outcome(ssize_t n, const char* call, std::string* why) {
  if (n >= 0) return n;
  if (n == -1) {
    int e = errno != 0 ? errno : EIO;
    *why = std::string(call) + " failed: errno " + std::to_string(e);
    return -e;
  }
  *why = std::string(call) + " failed: cuFile error " + std::to_string(-n);
  return -EIO;
}
}  // namespace

ssize_t CuFile::read(void* handle, void* devBase, size_t bytes, off_t fileOffset, off_t devOffset,
                     std::string* why) {
  errno = 0;
  return Outcome(fns_->read(handle, devBase, bytes, fileOffset, devOffset), "cuFileRead", why);
}

ssize_t CuFile::write(void* handle, const void* devBase, size_t bytes, off_t fileOffset,
                      off_t devOffset, std::string* why) {
  errno = 0;
  return Outcome(fns_->write(handle, devBase, bytes, fileOffset, devOffset), "cuFileWrite", why);
}

}  // namespace kvtier::shim
