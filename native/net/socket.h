// Sockets for the TCP transport: an owned descriptor, and numeric addresses in and out.
#pragma once
#include <sys/socket.h>

#include <cstdint>
#include <string>

namespace kvtier {

// RAII for a file descriptor: every socket, the epoll instance and the wakeup eventfd.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset();

 private:
  int fd_ = -1;
};

// "a.b.c.d:port" or "[v6]:port".
std::string AddressText(const sockaddr_storage& ss);
// Numeric addresses only: names are resolved in JavaScript (dns.lookup), off the network thread.
bool ParseAddress(const std::string& host, uint16_t port, sockaddr_storage* ss, socklen_t* len);
// The port a socket is bound to.
uint16_t PortOf(const sockaddr_storage& ss);
// TCP_NODELAY, best effort: a socket without it is slower for small frames, not wrong.
void NoDelay(int fd);

}  // namespace kvtier
