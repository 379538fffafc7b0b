#include "region_memory.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "../shim/cuda.h"

namespace kvtier {

std::shared_ptr<RegionMemory> RegionMemory::Allocate(size_t bytes, PinMode pin, std::string* error,
                                                     bool* notAvailable) {
  *notAvailable = false;
  // mmap gives page alignment (what O_DIRECT and DMA want) and lazily zeroed pages, so a large
  // region costs nothing until it is touched.
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    *error =
        std::string("mmap of ") + std::to_string(bytes) + " bytes failed: " + std::strerror(errno);
    return nullptr;
  }
  std::shared_ptr<RegionMemory> mem(new RegionMemory(static_cast<uint8_t*>(p), bytes));
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

RegionMemory::~RegionMemory() {
  // Unregistering can fail only if the driver is already torn down; the pages are freed anyway.
  if (pinned_) (void)shim::Cuda::instance().hostUnregister(data_);
  if (munmap(data_, size_) != 0) {
    // Nothing useful can be done in a destructor; the mapping leaks until exit.
  }
}

}  // namespace kvtier
