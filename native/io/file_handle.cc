#include "file_handle.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "../common/errors.h"
#include "../shim/cufile.h"

#ifndef STATX_DIOALIGN
#define STATX_DIOALIGN 0x00002000U
#endif

namespace kvtier {

namespace {

// Default when the kernel cannot tell us: the page size satisfies every block device.
constexpr uint32_t kSafeDirectAlign = 4096;

void QueryDirectAlignment(FileHandle* h) {
  struct statx stx {};
  if (statx(h->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
      (stx.stx_mask & STATX_DIOALIGN) != 0 && stx.stx_dio_offset_align != 0) {
    h->memAlign = stx.stx_dio_mem_align;
    h->offsetAlign = stx.stx_dio_offset_align;
  } else {
    h->memAlign = kSafeDirectAlign;
    h->offsetAlign = kSafeDirectAlign;
  }
}

int OpenRetryingEintr(const char* path, int flags, mode_t mode) {
  int fd;
  do {
    fd = open(path, flags, mode);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

void Fail(OpenError* error, const char* code, std::string message, int errnum,
          const char* syscall) {
  error->code = code;
  error->message = std::move(message);
  error->errnum = errnum;
  error->syscall = syscall;
}

}  // namespace

FileHandle::~FileHandle() {
  if (cufile != nullptr) shim::CuFile::instance().handleDeregister(cufile);
  // close() errors on a descriptor used only for reads and writes already reported tell nothing
  // new (the kernel releases it regardless), so they are ignored here.
  if (fd >= 0) (void)close(fd);
  if (bufferedFd >= 0) (void)close(bufferedFd);
}

std::shared_ptr<FileHandle> OpenFileHandle(const std::string& path, const OpenOptions& options,
                                           OpenError* error) {
  auto h = std::make_shared<FileHandle>();
  h->path = path;
  h->readOnly = options.readOnly;
  h->mode = options.direct;

  struct stat before {};
  bool existed = stat(path.c_str(), &before) == 0;
  // Undo our own creation on any failure, so a refused open leaves the directory as it was.
  auto fail = [&](const char* code, std::string message, int errnum, const char* syscall) {
    if (!existed && options.create) (void)unlink(path.c_str());
    Fail(error, code, std::move(message), errnum, syscall);
    return nullptr;
  };

  int flags = (options.readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (options.create) flags |= O_CREAT;
  if (options.truncate) flags |= O_TRUNC;

  if (options.direct != FileHandle::DirectMode::kOff) {
    h->fd = OpenRetryingEintr(path.c_str(), flags | O_DIRECT, 0644);
    if (h->fd >= 0) {
      h->direct = true;
    } else if (errno == EINVAL) {
      int e = errno;
      if (options.direct == FileHandle::DirectMode::kOn) {
        return fail(kNotAvailable,
                    "O_DIRECT is not supported for " + path +
                        " (its filesystem refuses it); open with direct: 'auto' to allow "
                        "buffered I/O",
                    e, "open");
      }
      h->directReason = "the filesystem does not support O_DIRECT; using buffered I/O";
    } else {
      int e = errno;
      return fail(kIo, "cannot open " + path, e, "open");
    }
  }
  if (h->fd < 0) {
    h->fd = OpenRetryingEintr(path.c_str(), flags, 0644);
    if (h->fd < 0) {
      int e = errno;
      return fail(kIo, "cannot open " + path, e, "open");
    }
  }

  if (h->direct) {
    QueryDirectAlignment(h.get());
    if (options.direct == FileHandle::DirectMode::kAuto) {
      // Reopen the same inode (not the same name, which may have moved) without O_DIRECT for
      // requests whose offsets or lengths O_DIRECT cannot take.
      std::string self = "/proc/self/fd/" + std::to_string(h->fd);
      int bflags = (options.readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
      h->bufferedFd = OpenRetryingEintr(self.c_str(), bflags, 0);
      if (h->bufferedFd < 0) {
        int e = errno;
        return fail(kIo, "cannot reopen " + path + " for buffered I/O", e, "open");
      }
    }
  }

  if (options.size >= 0 && !options.readOnly) {
    struct stat st {};
    if (fstat(h->fd, &st) != 0) {
      int e = errno;
      return fail(kIo, "cannot stat " + path, e, "fstat");
    }
    if (st.st_size < options.size) {
      // fallocate reserves the blocks now, so a full disk shows up here rather than mid-write.
      int rc = posix_fallocate(h->fd, 0, options.size);
      if (rc == EOPNOTSUPP || rc == EINVAL) {
        if (ftruncate(h->fd, options.size) != 0) {
          int e = errno;
          return fail(CodeForErrno(e), "cannot size " + path, e, "ftruncate");
        }
      } else if (rc != 0) {
        // posix_fallocate returns the error instead of setting errno.
        if (existed) (void)ftruncate(h->fd, st.st_size);
        return fail(CodeForErrno(rc),
                    "cannot preallocate " + std::to_string(options.size) + " bytes for " + path, rc,
                    "fallocate");
      }
    }
  }
  return h;
}

}  // namespace kvtier
