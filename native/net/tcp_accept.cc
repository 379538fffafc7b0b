// The TCP transport's admission (epoll thread): accepting connections, the budgets of
// connections in their handshake and of authenticated ones, and closing frames left stalled.
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "tcp_conn.h"

namespace kvtier {

void TcpTransport::AcceptAll(Listener& l) {
  for (int i = 0; i < 64; ++i) {
    sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    Fd fd(
        accept4(l.fd.get(), reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) {
        return;
      }
      NetEvent e;
      e.kind = NetEvent::kRefused;
      e.listener = l.id;
      e.err = errno;
      e.text = std::string("accept failed: ") + std::strerror(errno);
      Emit(std::move(e));
      PauseListener(l);
      return;
    }
    std::string remote = AddressText(ss);
    if (authenticated_ >= maxConnections_) {
      // Told why where the fresh socket's buffer takes it (it always has room for this much).
      std::vector<uint8_t> error = ErrorFrame(kErrorLimit, "too many connections");
      if (send(fd.get(), error.data(), error.size(), MSG_NOSIGNAL | MSG_DONTWAIT) ==
          static_cast<ssize_t>(error.size())) {
        counters_.errorFrames.fetch_add(1, std::memory_order_relaxed);
      }
      counters_.refused.fetch_add(1, std::memory_order_relaxed);
      NetEvent e;
      e.kind = NetEvent::kRefused;
      e.listener = l.id;
      e.text = remote;
      Emit(std::move(e));
      continue;  // fd closes here: the excess connection is refused
    }
    if (handshaking_.size() >= maxHandshakes_) {
      // The handshake budget is full: the oldest connection still in its handshake makes room.
      // Idle sockets are thereby let go as soon as newer ones come, instead of locking out a
      // client with the token until the handshake timeout.
      auto oldest = conns_.find(handshaking_.begin()->second);
      handshaking_.erase(handshaking_.begin());
      if (oldest != conns_.end()) {
        counters_.handshakesEvicted.fetch_add(1, std::memory_order_relaxed);
        oldest->second->accepted = false;  // already out of the budget
        FailConn(*oldest->second, kErrorLimit, EMFILE,
                 "too many connections in their handshake; the oldest is closed");
      }
    }
    NoDelay(fd.get());
    auto c = std::make_unique<Conn>();
    c->id = nextId_.fetch_add(1);
    c->fd = std::move(fd);
    c->accepted = true;
    c->stage.resize(kStageBytes);
    c->interest = EPOLLIN;
    epoll_event ev{};
    ev.events = c->interest;
    ev.data.u64 = Tag(kTagConn, c->id);
    // Not watched, not kept: the socket closes here and the peer sees it closed.
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c->fd.get(), &ev) != 0) continue;
    c->handshakeSeq = ++acceptSeq_;
    c->lastByte = std::chrono::steady_clock::now();
    handshaking_[c->handshakeSeq] = c->id;
    NetEvent e;
    e.kind = NetEvent::kAccepted;
    e.conn = c->id;
    e.listener = l.id;
    e.text = remote;
    Emit(std::move(e));
    conns_[c->id] = std::move(c);
  }
}

// Out of descriptors (EMFILE, ENFILE) or memory: stop listening for a moment rather than spin on a
// listener that stays readable (its level-triggered readiness would wake the thread at once).
void TcpTransport::PauseListener(Listener& l) {
  l.paused = true;
  l.pausedUntil = std::chrono::steady_clock::now() + std::chrono::milliseconds(kAcceptPauseMs);
  epoll_event ev{};
  ev.events = 0;
  ev.data.u64 = Tag(kTagListener, l.id);
  // Failing, the listener stays watched: accept() is tried again and fails again, no worse.
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, l.fd.get(), &ev) != 0) l.paused = false;
}

void TcpTransport::ResumeListeners() {
  auto now = std::chrono::steady_clock::now();
  for (auto& [id, l] : listeners_) {
    if (!l->paused || now < l->pausedUntil) continue;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = Tag(kTagListener, id);
    // Failing, it stays paused and is tried again at the next turn (WaitTimeout wakes for it).
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, l->fd.get(), &ev) == 0) l->paused = false;
  }
}

// An accepted connection's limits were raised: it has authenticated, and leaves the handshake
// budget for the connection budget, if there is room.
void TcpTransport::Authenticated(Conn& c) {
  if (!c.accepted || c.limited) {
    c.limited = true;
    return;
  }
  c.limited = true;
  handshaking_.erase(c.handshakeSeq);
  if (authenticated_ >= maxConnections_) {
    counters_.refused.fetch_add(1, std::memory_order_relaxed);
    c.accepted = false;  // counted in neither budget any more
    FailConn(c, kErrorLimit, EMFILE, "too many connections");
    return;
  }
  ++authenticated_;
}

// Closes authenticated connections that stopped part way through a frame: a payload (or its
// header or metadata) whose next byte has not come for payloadTimeoutMs holds its buffer, receive
// area or landing pieces, so it is closed with an ERROR and they are freed. Paused connections are
// not read, so they are not stalled; their clock restarts when they resume.
void TcpTransport::SweepStalled() {
  if (payloadTimeoutMs_ == 0) return;
  auto now = std::chrono::steady_clock::now();
  if (now < nextSweep_) return;
  uint64_t every = std::clamp<uint64_t>(payloadTimeoutMs_ / 4, kSweepMinMs, kSweepMaxMs);
  nextSweep_ = now + std::chrono::milliseconds(every);
  auto limit = std::chrono::milliseconds(payloadTimeoutMs_);
  std::vector<uint32_t> stalled;
  for (auto& [id, c] : conns_) {
    if (c->limited && !c->paused && c->reader.partial() && now - c->lastByte >= limit) {
      stalled.push_back(id);
    }
  }
  for (uint32_t id : stalled) {
    auto it = conns_.find(id);
    if (it == conns_.end()) continue;
    counters_.stalled.fetch_add(1, std::memory_order_relaxed);
    FailConn(*it->second, kErrorLimit, ETIMEDOUT,
             "no byte of a partly received frame for " + std::to_string(payloadTimeoutMs_) + " ms");
  }
}

}  // namespace kvtier
