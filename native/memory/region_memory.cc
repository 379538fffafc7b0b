#include "region_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "../shim/cuda.h"

namespace kvtier {

std::shared_ptr<RegionMemory> RegionMemory::Allocate(size_t bytes, PinMode pin, std::string* error,
                                                     bool* notAvailable) {
  *notAvailable = false;
  // mmap gives page alignment (what O_DIRECT and DMA want) and lazily zeroed pages. Regions of
  // 2 MiB or more are aligned to 2 MiB and asked to use transparent huge pages: a block then sits
  // in few physically contiguous pieces, so a 1 MiB transfer is one device request instead of
  // hundreds of 4 KiB segments (devices with short scatter lists, like virtio-blk, split such
  // requests and lose half their throughput).
  size_t mapped = bytes;
  size_t align = 0;
  if (bytes >= kHugePage) {
    mapped = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    align = kHugePage;
  }
  void* raw =
      mmap(nullptr, mapped + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    *error =
        std::string("mmap of ") + std::to_string(bytes) + " bytes failed: " + std::strerror(errno);
    return nullptr;
  }
  uint8_t* p = static_cast<uint8_t*>(raw);
  if (align != 0) {
    uintptr_t start = reinterpret_cast<uintptr_t>(raw);
    uintptr_t aligned = (start + align - 1) / align * align;
    size_t head = aligned - start;
    size_t tail = align - head;
    // Trimming an anonymous mapping cannot fail for ranges inside it; the checks are for form.
    if (head != 0) (void)munmap(raw, head);
    if (tail != 0) (void)munmap(reinterpret_cast<void*>(aligned + mapped), tail);
    p = reinterpret_cast<uint8_t*>(aligned);
    // Advice only: where THP is off, the region still works with 4 KiB pages.
    (void)madvise(p, mapped, MADV_HUGEPAGE);
  }
  std::shared_ptr<RegionMemory> mem(new RegionMemory(p, bytes, mapped));
  if (pin == PinMode::kOff) return mem;

  shim::Cuda& cuda = shim::Cuda::instance();
  if (!cuda.usable()) {
    mem->pinReason_ = cuda.status().loaded ? "no CUDA device" : cuda.status().reason;
  } else {
    std::string why;
    if (cuda.hostRegister(mem->data_, bytes, &why)) {
      mem->pinned_ = true;
    } else {
      mem->pinReason_ = why;
    }
  }
  if (!mem->pinned_ && pin == PinMode::kOn) {
    *error = "pinned memory was requested but cannot be pinned: " + mem->pinReason_;
    *notAvailable = true;
    return nullptr;
  }
  return mem;
}

namespace {

// Closes a file descriptor when it goes out of scope.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) (void)::close(fd_);  // a close error on a read-only use loses nothing
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

std::shared_ptr<RegionMemory> RegionMemory::MapShared(const std::string& path, size_t bytes,
                                                      std::string* error, int* errnum,
                                                      std::string* fileId) {
  *errnum = 0;
  if (bytes == 0) {
    *error = "a shared mapping needs at least 1 byte";
    return nullptr;
  }
  FdGuard fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (fd.get() < 0) {
    *errnum = errno;
    *error = "cannot open " + path + ": " + std::strerror(errno);
    return nullptr;
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) {
    *errnum = errno;
    *error = "cannot stat " + path + ": " + std::strerror(errno);
    return nullptr;
  }
  if (!S_ISREG(st.st_mode)) {
    *error = path + " is not a memfd or a regular file";
    return nullptr;
  }
  if (static_cast<uint64_t>(st.st_size) < bytes) {
    *error = path + " holds " + std::to_string(st.st_size) + " bytes, fewer than the " +
             std::to_string(bytes) + " asked for";
    return nullptr;
  }
  // A memfd made with MFD_ALLOW_SEALING is sealed against shrinking, so its owner cannot turn
  // our mapping into SIGBUS; other files (and unsealable memfds) refuse, which is allowed.
  (void)fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK);
  void* raw = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (raw == MAP_FAILED) {
    *errnum = errno;
    *error = "mmap of " + path + " failed: " + std::strerror(errno);
    return nullptr;
  }
  *fileId = std::to_string(static_cast<uint64_t>(st.st_dev)) + ":" +
            std::to_string(static_cast<uint64_t>(st.st_ino));
  return std::shared_ptr<RegionMemory>(new RegionMemory(static_cast<uint8_t*>(raw), bytes, bytes));
}

RegionMemory::~RegionMemory() {
  // Unregistering can fail only if the driver is already torn down; the pages are freed anyway.
  if (pinned_) (void)shim::Cuda::instance().hostUnregister(data_);
  if (munmap(data_, mapped_) != 0) {
    // Nothing useful can be done in a destructor; the mapping leaks until exit.
  }
}

}  // namespace kvtier
