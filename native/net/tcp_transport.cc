// The TCP transport's epoll thread: its loop, the commands the main thread posts, the write path
// and closing connections. Accepting is in tcp_accept.cc, the read path in tcp_receive.cc.
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <string>
#include <utility>

#include "tcp_conn.h"

namespace kvtier {

void TcpTransport::Post(std::unique_ptr<Command> cmd) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    commands_.push_back(std::move(cmd));
    // One wakeup per batch of commands: the sends JavaScript makes in one turn of its loop cost
    // one eventfd write and one epoll wakeup, not one each.
    wake = commands_.size() == 1;
  }
  if (wake) Wake();
}

void TcpTransport::Wake() {
  uint64_t one = 1;
  // EAGAIN only when the counter is saturated, which means a wakeup is already pending.
  while (wake_.valid() && write(wake_.get(), &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

// The lifecycle's stop (common/threaded_object.h): the thread closes every connection, telling
// JavaScript, delivers what it has and exits.
void TcpTransport::StopThread() {
  stop_.store(true);
  Wake();
  if (thread_.joinable()) thread_.join();
}

void TcpTransport::Flush() {
  std::unique_ptr<NetEvents> batch = events_.Take();
  if (!batch) return;
  // Refused only at teardown (the function is closing): nobody is left to tell, and the batch
  // is freed here.
  if (life_.tsfn().NonBlockingCall(batch.get()) == napi_ok) (void)batch.release();
}

void TcpTransport::Run() {
  // Nothing may escape this thread: an exception here would terminate the process.
  try {
    epoll_event evs[64];
    while (!stop_.load()) {
      int n = epoll_wait(epoll_.get(), evs, 64, WaitTimeout());
      if (n < 0 && errno != EINTR) break;
      SweepStalled();
      ResumeListeners();
      for (int i = 0; i < n; ++i) {
        uint64_t tag = evs[i].data.u64;
        auto kind = tag >> 32;
        auto id = static_cast<uint32_t>(tag & 0xffffffffu);
        if (kind == kTagWake) {
          uint64_t count;
          // Nonblocking: reads the counter to zero, then EAGAIN ends the loop.
          while (read(wake_.get(), &count, sizeof(count)) > 0) {
          }
          RunCommands();
        } else if (kind == kTagListener) {
          auto it = listeners_.find(id);
          if (it != listeners_.end()) AcceptAll(*it->second);
        } else {
          auto it = conns_.find(id);
          if (it != conns_.end()) HandleConn(*it->second, evs[i].events);
        }
      }
      Flush();
    }
    std::vector<uint32_t> ids;
    for (auto& [id, c] : conns_) ids.push_back(id);
    for (uint32_t id : ids) CloseConnNow(id, 0, "the transport was closed");
    listeners_.clear();
    {
      std::lock_guard<std::mutex> lock(mu_);
      commands_.clear();
    }
    Flush();
  } catch (const std::exception& e) {
    // Only allocation failures can get here; the sockets close with the transport. Telling
    // JavaScript may fail the same way, and then it stays untold rather than end the process.
    try {
      NetEvent ev;
      ev.kind = NetEvent::kClosed;
      ev.text = std::string("network thread failed: ") + e.what();
      Emit(std::move(ev));
      Flush();
    } catch (const std::exception&) {
    }
  }
}

// How long epoll may wait: until a paused listener resumes, or the next look for stalled frames.
int TcpTransport::WaitTimeout() {
  int timeout = -1;
  for (auto& [id, l] : listeners_) {
    if (l->paused) timeout = kAcceptPauseMs;
  }
  if (payloadTimeoutMs_ > 0 && !conns_.empty()) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    nextSweep_ - std::chrono::steady_clock::now())
                    .count();
    int wait = static_cast<int>(std::clamp<int64_t>(left, 0, static_cast<int64_t>(kSweepMaxMs)));
    timeout = timeout < 0 ? wait : std::min(timeout, wait);
  }
  return timeout;
}

// Tells the peer why, with an ERROR frame, where the socket still takes it without waiting, then
// closes. Bytes already queued go first (a frame cut in half would garble the ERROR); a peer that
// does not read gets the close alone. `why` is a copy: the caller's may live in the connection.
void TcpTransport::FailConn(Conn& c, uint32_t code, int err, std::string why) {
  uint32_t id = c.id;
  if (!c.connecting) {
    OutMsg m;
    m.head = ErrorFrame(code, why);
    m.total = m.head.size();
    c.outQueued += m.total;
    counters_.outQueued.fetch_add(m.total, std::memory_order_relaxed);
    c.out.push_back(std::move(m));
    if (!WriteConn(c)) return;  // closed by the failed send, with its own reason
    if (c.out.empty()) counters_.errorFrames.fetch_add(1, std::memory_order_relaxed);
  }
  CloseConnNow(id, err, why);
}

// Backpressure (Conn::held): whether the connection holds too much to be read on.
bool TcpTransport::Over(const Conn& c) const {
  return c.maxQueued != UINT64_MAX && c.held + c.outQueued > c.maxQueued;
}

// Resumes reading a paused connection once what it holds has drained to half. Returns false when
// the connection closed meanwhile.
bool TcpTransport::MaybeResume(Conn& c) {
  if (!c.paused || c.held + c.outQueued > c.maxQueued / 2) return true;
  c.paused = false;
  c.lastByte = std::chrono::steady_clock::now();
  // Bytes already staged would not wake epoll again, so read now.
  return ReadConn(c);
}

void TcpTransport::RunCommands() {
  std::vector<std::unique_ptr<Command>> cmds;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cmds.swap(commands_);
  }
  for (auto& cmd : cmds) Apply(*cmd);
}

void TcpTransport::Apply(Command& cmd) {
  switch (cmd.kind) {
    case Command::kAddListener: {
      auto l = std::make_unique<Listener>();
      l->id = cmd.id;
      l->fd = std::move(cmd.fd);
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = Tag(kTagListener, l->id);
      if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, l->fd.get(), &ev) == 0) {
        listeners_[l->id] = std::move(l);
      } else {
        NetEvent e;
        e.kind = NetEvent::kRefused;
        e.listener = cmd.id;
        e.err = errno;
        e.text = std::string("cannot watch the listener: ") + std::strerror(e.err);
        Emit(std::move(e));
      }
      break;
    }
    case Command::kAddConn:
      AddConn(cmd);
      break;
    case Command::kSend:
      QueueSend(cmd);
      break;
    case Command::kLimits: {
      auto it = conns_.find(cmd.id);
      if (it == conns_.end()) break;
      Conn& c = *it->second;
      c.reader.SetLimits(cmd.maxMeta, cmd.maxPayload);
      c.maxQueued = cmd.maxQueued;
      c.answerType = cmd.answerType;
      c.answerUnit = cmd.answerUnit;
      c.lastByte = std::chrono::steady_clock::now();
      Authenticated(c);
      break;
    }
    case Command::kRelease: {
      auto it = conns_.find(cmd.id);
      if (it == conns_.end()) break;
      Conn& c = *it->second;
      c.held -= std::min(c.held, cmd.maxPayload);
      if (!MaybeResume(c)) break;
      UpdateInterest(c);
      break;
    }
    case Command::kCloseConn:
      if (conns_.count(cmd.id) != 0) CloseConnNow(cmd.id, 0, cmd.why);
      break;
    case Command::kCloseListener: {
      auto it = listeners_.find(cmd.id);
      if (it == listeners_.end()) break;
      // Failing, closing the descriptor (erase) removes it from the set all the same.
      if (epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->fd.get(), nullptr) != 0) {
      }
      listeners_.erase(it);
      break;
    }
  }
}

void TcpTransport::AddConn(Command& cmd) {
  auto c = std::make_unique<Conn>();
  c->id = cmd.id;
  c->fd = std::move(cmd.fd);
  c->connecting = cmd.connecting;
  c->stage.resize(kStageBytes);
  c->interest = EPOLLIN | (c->connecting ? uint32_t{EPOLLOUT} : 0u);
  epoll_event ev{};
  ev.events = c->interest;
  ev.data.u64 = Tag(kTagConn, c->id);
  NetEvent e;
  e.conn = c->id;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c->fd.get(), &ev) != 0) {
    e.kind = NetEvent::kClosed;
    e.err = errno;
    e.text = "cannot watch the socket";
    Emit(std::move(e));
    return;
  }
  bool connecting = c->connecting;
  conns_[c->id] = std::move(c);
  if (connecting) return;  // kConnected once the socket is writable (HandleConn)
  e.kind = NetEvent::kConnected;
  Emit(std::move(e));
}

void TcpTransport::QueueSend(Command& cmd) {
  auto it = conns_.find(cmd.id);
  if (it == conns_.end()) return;  // already closed: its kClosed event releases the buffers
  Conn& c = *it->second;
  if (cmd.hasExpect) c.expects[cmd.expectId] = std::move(cmd.expect);
  uint64_t bytes = cmd.msg.total;
  c.out.push_back(std::move(cmd.msg));
  c.outQueued += bytes;
  counters_.outQueued.fetch_add(bytes, std::memory_order_relaxed);
  RaiseTo(counters_.maxOutQueued, c.outQueued);
  if (!c.connecting && c.out.size() == 1) {
    if (!WriteConn(c)) return;
  }
  if (!c.paused && Over(c)) {
    // Answers the peer does not read pile up here: stop reading its requests meanwhile.
    c.paused = true;
    counters_.pauses.fetch_add(1, std::memory_order_relaxed);
  } else if (!MaybeResume(c)) {
    return;  // written out at once, so reading resumes; it closed meanwhile
  }
  UpdateInterest(c);
}

void TcpTransport::CloseConnNow(uint32_t id, int err, const std::string& why) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  // Failing, the descriptor is closed below all the same, which removes it from the epoll set.
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c.fd.get(), nullptr) != 0) {
    // Nothing further: see above.
  }
  if (c.accepted && c.limited) {
    --authenticated_;
  } else if (c.accepted) {
    handshaking_.erase(c.handshakeSeq);
  }
  counters_.outQueued.fetch_sub(std::min(c.outQueued, counters_.outQueued.load()),
                                std::memory_order_relaxed);
  if (it->second->inArea) {
    // A payload cut short: its area was never handed to JavaScript, so it is free again.
    areas_.Return(it->second->area);
    it->second->inArea = false;
    it->second->payload = nullptr;
  }
  // Landing pieces of a payload cut short were never named to JavaScript either.
  if (!it->second->landed.empty()) areas_.ReturnLanding(&it->second->landed);
  // The socket, the queued sends and the expectations go first: once JavaScript hears of the
  // close, no byte of its memory is read or written any more.
  conns_.erase(it);
  NetEvent e;
  e.kind = NetEvent::kClosed;
  e.conn = id;
  e.err = err;
  e.text = why;
  Emit(std::move(e));
}

void TcpTransport::UpdateInterest(Conn& c) {
  uint32_t want = (c.paused ? 0u : uint32_t{EPOLLIN}) |
                  ((c.connecting || !c.out.empty()) ? uint32_t{EPOLLOUT} : 0u);
  if (want == c.interest) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = Tag(kTagConn, c.id);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev) == 0) c.interest = want;
}

void TcpTransport::HandleConn(Conn& c, uint32_t events) {
  uint32_t id = c.id;
  if (c.connecting && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) != 0) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) {
      CloseConnNow(id, err, std::string("cannot connect: ") + std::strerror(err));
      return;
    }
    c.connecting = false;
    NetEvent e;
    e.kind = NetEvent::kConnected;
    e.conn = id;
    Emit(std::move(e));
  }
  if (c.paused && (events & (EPOLLHUP | EPOLLERR)) != 0) {
    // Epoll reports a hangup whatever the interest, again and again while it is not handled;
    // a paused connection is not read, so it is closed here. Its peer can no longer take
    // answers anyway.
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    CloseConnNow(id, err,
                 err != 0 ? std::string("connection failed: ") + std::strerror(err)
                          : std::string("the peer closed the connection"));
    return;
  }
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0 && !c.paused) {
    if (!ReadConn(c)) return;  // closed
  }
  if (!c.out.empty() && !c.connecting) {
    if (!WriteConn(c)) return;
    if (!MaybeResume(c)) return;
  }
  UpdateInterest(c);
}

bool TcpTransport::WriteConn(Conn& c) {
  while (!c.out.empty()) {
    iovec iov[kMaxIov];
    int n = 0;
    for (const OutMsg& m : c.out) {
      uint64_t skip = m.done;
      if (skip < m.head.size()) {
        iov[n].iov_base = const_cast<uint8_t*>(m.head.data() + skip);
        iov[n].iov_len = m.head.size() - skip;
        ++n;
        skip = 0;
      } else {
        skip -= m.head.size();
      }
      for (const Span& s : m.spans) {
        if (n == kMaxIov) break;
        if (skip >= s.len) {
          skip -= s.len;
          continue;
        }
        iov[n].iov_base = s.data + skip;
        iov[n].iov_len = s.len - skip;
        skip = 0;
        ++n;
      }
      if (n == kMaxIov) break;
    }
    msghdr mh{};
    mh.msg_iov = iov;
    mh.msg_iovlen = static_cast<size_t>(n);
    ssize_t w = sendmsg(c.fd.get(), &mh, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      if (errno == EINTR) continue;
      int err = errno;
      CloseConnNow(c.id, err, std::string("send failed: ") + std::strerror(err));
      return false;
    }
    auto left = static_cast<uint64_t>(w);
    c.outQueued -= std::min(c.outQueued, left);
    counters_.outQueued.fetch_sub(left, std::memory_order_relaxed);
    while (left > 0) {
      OutMsg& m = c.out.front();
      uint64_t take = std::min(left, m.total - m.done);
      m.done += take;
      left -= take;
      if (m.done < m.total) break;
      if (m.notify) {
        NetEvent e;
        e.kind = NetEvent::kSent;
        e.conn = c.id;
        e.token = m.token;
        Emit(std::move(e));
      }
      c.out.pop_front();
    }
  }
  return true;
}

}  // namespace kvtier
