// The TCP transport's read path (epoll thread): socket bytes into the frame reader, through a
// staging buffer or, for large payload remainders, straight into their destination; payloads to
// an expected destination, landing pieces, a receive area or a fresh buffer; complete frames to
// JavaScript with the bytes they hold against the connection's backpressure.
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "batch_layout.h"
#include "tcp_conn.h"

namespace kvtier {

bool TcpTransport::ReadConn(Conn& c) {
  size_t budget = kReadBudget;
  // Staged bytes are always consumed, budget or not: the socket may hold nothing more, and then
  // epoll would never report this connection again while a frame sits in the stage.
  while (budget > 0 || c.stageHead < c.stageTail) {
    if (c.paused) return true;  // the release or write that resumes it reads on
    if (c.stageHead < c.stageTail) {
      size_t used = 0;
      if (!Consume(c, c.stage.data() + c.stageHead, c.stageTail - c.stageHead, &used)) {
        return false;
      }
      c.stageHead += used;
      continue;
    }
    ssize_t r = 0;
    if (c.reader.inPayload() && c.reader.payloadOwed() >= kDirectReadMin) {
      // Straight into the destination: no staging copy for the bulk of a block.
      iovec iov[kMaxIov];
      int n = c.reader.DirectIov(iov, kMaxIov);
      r = readv(c.fd.get(), iov, n);
      if (r > 0) {
        c.lastByte = std::chrono::steady_clock::now();
        size_t used = 0;
        if (!Consume(c, nullptr, static_cast<size_t>(r), &used)) return false;
        budget -= std::min(budget, static_cast<size_t>(r));
        continue;
      }
    } else {
      r = recv(c.fd.get(), c.stage.data(), c.stage.size(), 0);
      if (r > 0) {
        c.lastByte = std::chrono::steady_clock::now();
        c.stageHead = 0;
        c.stageTail = static_cast<size_t>(r);
        budget -= std::min(budget, static_cast<size_t>(r));
        continue;
      }
    }
    if (r == 0) {
      CloseConnNow(c.id, 0,
                   c.reader.partial() ? "the peer closed the connection in the middle of a frame"
                                      : "the peer closed the connection");
      return false;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      WaitFor(c);
      return true;
    }
    if (errno == EINTR) continue;
    int err = errno;
    CloseConnNow(c.id, err, std::string("receive failed: ") + std::strerror(err));
    return false;
  }
  // Out of budget, with bytes possibly still queued: the mark must fit what the frame now owes,
  // or a small next frame would never be reported readable.
  WaitFor(c);
  return true;
}

// Called whenever the thread stops reading a connection (nothing queued, or its budget spent):
// sets the receive low-water mark for what the current frame still owes. While a large payload is
// owed, the socket reports readable only once a good part of it has arrived (SO_RCVLOWAT), so a
// block lands in a few large reads and wakeups rather than one per segment. The mark is never more
// than the frame owes (those bytes are bound to come, or the peer closes, which wakes the reader
// whatever the mark), and is 1 otherwise, so a small frame is always seen.
void TcpTransport::WaitFor(Conn& c) {
  int want = 1;
  if (c.reader.inPayload()) {
    uint64_t left = c.reader.payloadOwed();
    if (left >= kLowatMin) want = static_cast<int>(std::min<uint64_t>(left, kLowatMax));
  }
  if (want == c.lowat) return;
  // Best effort: without it the reads are smaller, not wrong.
  if (setsockopt(c.fd.get(), SOL_SOCKET, SO_RCVLOWAT, &want, sizeof(want)) == 0) c.lowat = want;
}

// Takes n bytes of the current frame: from src (staged bytes), or, with src null, bytes a direct
// read already put in place. Returns false when the frame broke a rule and the connection closed.
bool TcpTransport::Consume(Conn& c, const uint8_t* src, size_t n, size_t* used) {
  switch (c.reader.Consume(src, n, used)) {
    case FrameReader::Step::kMore:
      return true;
    case FrameReader::Step::kMetaDone:
      return StartPayload(c);
    case FrameReader::Step::kFrameDone:
      return FrameReady(c);
    case FrameReader::Step::kFault:
      break;
  }
  const FrameReader::Fault& f = c.reader.fault();
  FailConn(c, f.code, f.err, f.why);
  return false;
}

// Metadata complete: decides where the payload goes (an expected destination or a fresh buffer).
bool TcpTransport::StartPayload(Conn& c) {
  const FrameReader::Header& h = c.reader.header();
  std::vector<ByteSpan> place;
  auto it = c.expects.find(h.requestId);
  if (it != c.expects.end()) {
    Expect expect = std::move(it->second);
    c.expects.erase(it);  // any answer ends the expectation; an error answer carries no blocks
    if (expect.type == h.type && h.payloadLen > 0) {
      std::vector<ByteSpan> spans;
      spans.reserve(expect.spans.size());
      for (const Span& s : expect.spans) spans.push_back({s.data, s.len});
      std::string why;
      if (!MatchPlacement(c.reader.meta(), spans, h.payloadLen, &place, &why)) {
        FailConn(c, kErrorProtocol, EPROTO, why);
        return false;
      }
    }
  }
  if (h.payloadLen == 0) return FrameReady(c);
  if (place.empty() && areas_.TakeLanding(h.type, h.payloadLen, &c.landed)) {
    for (const Area& a : c.landed) place.push_back({a.data, a.len});
  }
  c.placed = !place.empty();
  if (c.placed) {
    c.reader.SetSpans(std::move(place));
  } else if (areas_.Take(h.payloadLen, &c.area)) {
    c.inArea = true;
    c.payload = c.area.data;
    c.reader.SetBuffer(c.payload);
  } else {
    c.payload = static_cast<uint8_t*>(std::malloc(h.payloadLen));
    if (c.payload == nullptr) {
      CloseConnNow(c.id, ENOMEM, "cannot allocate " + std::to_string(h.payloadLen) + " bytes");
      return false;
    }
    c.reader.SetBuffer(c.payload);
  }
  return true;
}

bool TcpTransport::FrameReady(Conn& c) {
  const FrameReader::Header& h = c.reader.header();
  NetEvent e;
  e.kind = NetEvent::kFrame;
  e.conn = c.id;
  e.type = h.type;
  e.flags = h.flags;
  e.requestId = h.requestId;
  e.payloadBytes = h.payloadLen;
  if (c.maxQueued != UINT64_MAX) {
    // What this frame holds until JavaScript releases it: counted now, before the next frame is
    // read, so no burst of small requests can commit more than the limit and one frame.
    uint64_t answer =
        h.type == c.answerType && c.answerUnit > 0 ? AnswerBytes(c.reader.meta(), c.answerUnit) : 0;
    e.held = h.payloadLen + c.reader.meta().size();
    e.held = answer > UINT64_MAX - e.held ? UINT64_MAX : e.held + answer;
    c.held = e.held > UINT64_MAX - c.held ? UINT64_MAX : c.held + e.held;
    RaiseTo(counters_.maxHeld, c.held);
    if (!c.paused && Over(c)) {
      c.paused = true;  // ReadConn stops before the next frame
      counters_.pauses.fetch_add(1, std::memory_order_relaxed);
    }
  }
  e.meta = std::move(c.reader.meta());
  if (c.inArea) {
    e.area = c.area.token;
    c.inArea = false;
  } else {
    e.payload.reset(c.payload);
  }
  e.placed = c.placed;
  if (e.placed) e.checksums = std::move(c.reader.checksums());
  for (const Area& a : c.landed) e.landed.push_back(a.token);
  c.landed.clear();
  c.payload = nullptr;
  c.placed = false;
  c.reader.Next();
  Emit(std::move(e));
  return true;
}

}  // namespace kvtier
