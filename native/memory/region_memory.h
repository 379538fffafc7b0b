// Native memory that I/O can target. Shared ownership lets in-flight transfers keep the bytes alive
// after JavaScript closed or collected the Region: the memory goes away with its last user.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace kvtier {

class RegionMemory {
 public:
  enum class PinMode { kAuto, kOn, kOff };

  // Allocates page-aligned, zeroed memory with mmap. Returns nullptr and sets *error on failure
  // (including kOn when no CUDA device can pin it).
  static std::shared_ptr<RegionMemory> Allocate(size_t bytes, PinMode pin, std::string* error,
                                                bool* notAvailable);
  // Maps `bytes` of the file at `path` shared (MAP_SHARED, read and write): another process's
  // memfd or shared-memory file reached through /proc/<pid>/fd/<n>. The file descriptor is closed
  // once mapped; the mapping keeps the memory. Returns nullptr and sets *error and *errnum (0 for
  // a bad argument) on failure. *fileId names the file ("<dev>:<inode>") so a second mapping of
  // the same memory can be told.
  static std::shared_ptr<RegionMemory> MapShared(const std::string& path, size_t bytes,
                                                 std::string* error, int* errnum,
                                                 std::string* fileId);
  ~RegionMemory();
  RegionMemory(const RegionMemory&) = delete;
  RegionMemory& operator=(const RegionMemory&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool pinned() const { return pinned_; }
  // Why the memory is not pinned (empty when pinned or when pinning was not asked for).
  const std::string& pinReason() const { return pinReason_; }

 private:
  RegionMemory(uint8_t* data, size_t size, size_t mapped)
      : data_(data), size_(size), mapped_(mapped) {}
  static constexpr size_t kHugePage = size_t{2} << 20;
  uint8_t* data_;
  size_t size_;
  size_t mapped_;  // length of the mapping (size_ rounded up for huge pages)
  bool pinned_ = false;
  std::string pinReason_;
};

}  // namespace kvtier
