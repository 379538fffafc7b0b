// An open file that I/O can target. Shared ownership keeps the descriptor open until the last
// in-flight operation on it has finished, even if JavaScript closed the File meanwhile.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

namespace kvtier {

struct FileHandle {
  enum class DirectMode { kOn, kOff, kAuto };

  std::string path;
  int fd = -1;          // the descriptor I/O uses (O_DIRECT when direct is true)
  int bufferedFd = -1;  // direct:'auto' only: for requests O_DIRECT cannot take
  bool direct = false;  // whether fd bypasses the page cache
  bool readOnly = false;
  DirectMode mode = DirectMode::kOn;
  std::string directReason;  // why direct is false although it was asked for ('auto')
  uint32_t memAlign = 1;     // buffer address alignment O_DIRECT needs (1 when buffered)
  uint32_t offsetAlign = 1;  // file offset and length alignment O_DIRECT needs
  // cuFile's registration of fd, made by the first GPU file engine that reads or writes it and
  // dropped before fd closes (a registration must never outlive its descriptor).
  std::mutex cufileMutex;
  void* cufile = nullptr;
  std::string cufileRefused;  // why cuFile would not register fd, once it refused

  FileHandle() = default;
  FileHandle(const FileHandle&) = delete;
  FileHandle& operator=(const FileHandle&) = delete;
  ~FileHandle();
};

struct OpenOptions {
  bool create = false;
  bool truncate = false;
  bool readOnly = false;
  FileHandle::DirectMode direct = FileHandle::DirectMode::kOn;
  int64_t size = -1;  // preallocate at least this many bytes when >= 0
};

struct OpenError {
  const char* code = nullptr;
  std::string message;
  int errnum = 0;
  const char* syscall = nullptr;
};

// Opens (and with options.size preallocates) a file. On failure returns nullptr, fills *error and
// removes the file again if this call created it.
std::shared_ptr<FileHandle> OpenFileHandle(const std::string& path, const OpenOptions& options,
                                           OpenError* error);

}  // namespace kvtier
