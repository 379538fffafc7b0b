// Internal to the shims: the dlopen/dlsym plumbing cuda.cc, cufile.cc and ibverbs.cc share.
#pragma once
#include <dlfcn.h>
#include <link.h>

#include <cstdlib>
#include <string>

namespace kvtier::shim::detail {

// Owns a dlopen handle while a loader is still probing. If the probe fails part-way (a missing
// symbol, say) the destructor closes the library again so a half-usable copy does not stay mapped.
// A probe that succeeds calls release(): the singletons then keep the handle for the process
// lifetime, because their resolved function pointers must stay valid for as long as any thread
// might call them, and unloading a driver library at exit would race threads still inside it.
class DlHandle {
 public:
  DlHandle() = default;
  DlHandle(const DlHandle&) = delete;
  DlHandle& operator=(const DlHandle&) = delete;
  ~DlHandle() {
    if (handle_ != nullptr && dlclose(handle_) != 0) {
      // Nothing useful can be done in a destructor: the library just stays mapped.
    }
  }

  // RTLD_LOCAL keeps the driver's symbols out of the global namespace, so they cannot clash with
  // another copy loaded by, say, PyTorch in the same process. On failure *error gets dlerror().
  bool open(const std::string& name, std::string* error) {
    handle_ = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle_ == nullptr) {
      const char* why = dlerror();
      *error = why != nullptr ? why : "dlopen(" + name + ") failed";
      return false;
    }
    return true;
  }

  void* get() const { return handle_; }

  // Hands the handle over for the process lifetime; the destructor no longer closes it.
  void* release() {
    void* h = handle_;
    handle_ = nullptr;
    return h;
  }

  // Resolves `name` into *fn. Returns false (and sets *error to "missing symbol NAME") when absent.
  template <typename Fn>
  bool sym(const char* name, Fn* fn, std::string* error) const {
    if (!optionalSym(name, fn)) {
      *error = std::string("missing symbol ") + name;
      return false;
    }
    return true;
  }

  // Like sym() for entry points that only newer library versions export.
  template <typename Fn>
  bool optionalSym(const char* name, Fn* fn) const {
    (void)dlerror();  // clear a stale error so a NULL result is attributed to this lookup
    void* p = dlsym(handle_, name);
    if (p == nullptr || dlerror() != nullptr) {
      *fn = nullptr;
      return false;
    }
    *fn = reinterpret_cast<Fn>(p);
    return true;
  }

  // The file the loader actually mapped, with symlinks resolved, so `kvtier info` shows which
  // copy of a library was picked (and its full versioned name). Empty if the loader cannot say.
  std::string realPath() const {
    struct link_map* map = nullptr;
    if (handle_ == nullptr || dlinfo(handle_, RTLD_DI_LINKMAP, &map) != 0 || map == nullptr ||
        map->l_name == nullptr) {
      return "";
    }
    char* resolved = realpath(map->l_name, nullptr);
    if (resolved == nullptr) return map->l_name;  // still the best answer we have
    std::string path(resolved);
    std::free(resolved);
    return path;
  }

 private:
  void* handle_ = nullptr;
};

// "/usr/lib/libibverbs.so.1.14.44.0" -> "1.14.44.0"; "" when the file name has no ".so." suffix.
inline std::string SonameSuffix(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  size_t so = base.find(".so.");
  return so == std::string::npos ? "" : base.substr(so + 4);
}

}  // namespace kvtier::shim::detail
