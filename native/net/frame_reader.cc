#include "frame_reader.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "../common/crc32c.h"

namespace kvtier {

uint32_t ReadLe32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

uint64_t ReadLe64(const uint8_t* p) {
  return static_cast<uint64_t>(ReadLe32(p)) | static_cast<uint64_t>(ReadLe32(p + 4)) << 32;
}

namespace {

void PutLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

void PutLe64(uint8_t* p, uint64_t v) {
  PutLe32(p, static_cast<uint32_t>(v));
  PutLe32(p + 4, static_cast<uint32_t>(v >> 32));
}

}  // namespace

FrameReader::Step FrameReader::Refuse(int err, uint32_t code, std::string why) {
  phase_ = kFaulted;
  fault_ = {err, code, std::move(why)};
  return Step::kFault;
}

FrameReader::Step FrameReader::MetaDone() {
  phase_ = kPayload;
  payloadHave_ = 0;
  return Step::kMetaDone;
}

FrameReader::Step FrameReader::Consume(const uint8_t* src, size_t n, size_t* used) {
  *used = 0;
  switch (phase_) {
    case kFaulted:
      return Step::kFault;
    case kDone:
      return Step::kFrameDone;
    case kHeader: {
      if (src == nullptr) return Refuse(EPROTO, kErrorProtocol, "header bytes without a source");
      size_t take = std::min(n, kFrameHeaderBytes - headerHave_);
      std::memcpy(header_ + headerHave_, src, take);
      headerHave_ += take;
      *used = take;
      if (headerHave_ < kFrameHeaderBytes) return Step::kMore;
      uint32_t magic = ReadLe32(header_);
      h_.type = header_[4];
      h_.flags = header_[5];
      h_.requestId = ReadLe32(header_ + 8);
      h_.metaLen = ReadLe32(header_ + 12);
      h_.payloadLen = ReadLe64(header_ + 16);
      if (magic != kFrameMagic)
        return Refuse(EPROTO, kErrorProtocol, "not a kvtier frame (bad magic)");
      if (h_.metaLen > maxMeta_) {
        return Refuse(EMSGSIZE, kErrorLimit,
                      "frame metadata of " + std::to_string(h_.metaLen) +
                          " bytes exceeds the limit of " + std::to_string(maxMeta_));
      }
      if (h_.payloadLen > maxPayload_) {
        return Refuse(EMSGSIZE, kErrorLimit,
                      "frame payload of " + std::to_string(h_.payloadLen) +
                          " bytes exceeds the limit of " + std::to_string(maxPayload_));
      }
      // Checked against the limit first: nothing is allocated for a length from the wire that
      // the limits do not allow.
      meta_.assign(h_.metaLen, 0);
      metaHave_ = 0;
      phase_ = kMeta;
      if (h_.metaLen > 0) return Step::kMore;
      return MetaDone();
    }
    case kMeta: {
      if (src == nullptr) return Refuse(EPROTO, kErrorProtocol, "metadata without a source");
      size_t take = std::min(n, meta_.size() - metaHave_);
      std::memcpy(meta_.data() + metaHave_, src, take);
      metaHave_ += take;
      *used = take;
      if (metaHave_ < meta_.size()) return Step::kMore;
      return MetaDone();
    }
    case kPayload:
      break;
  }
  size_t take = static_cast<size_t>(std::min<uint64_t>(n, h_.payloadLen - payloadHave_));
  if (take > 0 && buf_ == nullptr && spans_.empty()) {
    return Refuse(EPROTO, kErrorProtocol, "payload without a destination");
  }
  if (buf_ != nullptr) {
    if (src != nullptr) std::memcpy(buf_ + payloadHave_, src, take);
  } else {
    size_t left = take;
    const uint8_t* from = src;
    while (left > 0) {
      if (spanAt_ >= spans_.size())
        return Refuse(EPROTO, kErrorProtocol, "payload overruns its destinations");
      ByteSpan& s = spans_[spanAt_];
      size_t k = static_cast<size_t>(std::min<uint64_t>(left, s.len - spanOff_));
      if (from != nullptr) {
        std::memcpy(s.data + spanOff_, from, k);
        from += k;
      }
      // Checksummed as the bytes land, while they are still in cache: reading a whole block
      // again once the frame is complete costs a trip to memory.
      crc_[spanAt_] = Crc32c(crc_[spanAt_], s.data + spanOff_, k);
      spanOff_ += k;
      left -= k;
      if (spanOff_ == s.len) {
        ++spanAt_;
        spanOff_ = 0;
      }
    }
  }
  payloadHave_ += take;
  *used = take;
  if (payloadHave_ < h_.payloadLen) return Step::kMore;
  phase_ = kDone;
  ++frames_;
  return Step::kFrameDone;
}

void FrameReader::SetBuffer(uint8_t* buf) {
  buf_ = buf;
  spans_.clear();
  crc_.clear();
}

void FrameReader::SetSpans(std::vector<ByteSpan> spans) {
  buf_ = nullptr;
  // Empty destinations receive nothing; dropping them keeps the walk in Consume simple.
  spans.erase(
      std::remove_if(spans.begin(), spans.end(), [](const ByteSpan& s) { return s.len == 0; }),
      spans.end());
  spans_ = std::move(spans);
  crc_.assign(spans_.size(), 0);
  spanAt_ = 0;
  spanOff_ = 0;
}

int FrameReader::DirectIov(iovec* iov, int max) const {
  if (phase_ != kPayload || max < 1 || payloadOwed() == 0) return 0;
  if (buf_ != nullptr) {
    iov[0].iov_base = buf_ + payloadHave_;
    iov[0].iov_len = static_cast<size_t>(payloadOwed());
    return 1;
  }
  int n = 0;
  uint64_t off = spanOff_;
  for (size_t s = spanAt_; s < spans_.size() && n < max; ++s) {
    iov[n].iov_base = spans_[s].data + off;
    iov[n].iov_len = static_cast<size_t>(spans_[s].len - off);
    off = 0;
    ++n;
  }
  return n;
}

void FrameReader::Next() {
  if (phase_ == kFaulted) return;
  phase_ = kHeader;
  headerHave_ = 0;
  h_ = Header{};
  meta_.clear();
  metaHave_ = 0;
  payloadHave_ = 0;
  buf_ = nullptr;
  spans_.clear();
  crc_.clear();
  spanAt_ = 0;
  spanOff_ = 0;
}

std::vector<uint8_t> ErrorFrame(uint32_t code, const std::string& text) {
  size_t len = std::min<size_t>(text.size(), 1000);
  std::vector<uint8_t> out(kFrameHeaderBytes + 8 + len, 0);
  PutLe32(out.data(), kFrameMagic);
  out[4] = kErrorFrameType;
  PutLe32(out.data() + 12, static_cast<uint32_t>(8 + len));
  PutLe64(out.data() + 16, 0);
  PutLe32(out.data() + kFrameHeaderBytes, code);
  PutLe32(out.data() + kFrameHeaderBytes + 4, static_cast<uint32_t>(len));
  std::memcpy(out.data() + kFrameHeaderBytes + 8, text.data(), len);
  return out;
}

}  // namespace kvtier
