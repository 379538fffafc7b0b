#include "op.h"

#include <cerrno>
#include <cstring>

#include "../common/crc32c.h"

namespace kvtier {

bool AcquireBounce(Op& op) {
  if (op.bounceAlign == 0 || op.bounce != nullptr || op.kind == OpKind::kSync) return true;
  uint64_t size = (op.len + op.bounceAlign - 1) / op.bounceAlign * op.bounceAlign;
  void* p = nullptr;
  if (posix_memalign(&p, op.bounceAlign < sizeof(void*) ? sizeof(void*) : op.bounceAlign,
                     size == 0 ? op.bounceAlign : size) != 0) {
    op.err = ENOMEM;
    return false;
  }
  op.bounce = static_cast<uint8_t*>(p);
  if (op.kind == OpKind::kWrite) std::memcpy(op.bounce, op.mem, op.len);
  return true;
}

void ReleaseBounce(Op& op) {
  if (op.bounce == nullptr) return;
  if (op.kind == OpKind::kRead && op.done > 0) std::memcpy(op.mem, op.bounce, op.done);
  std::free(op.bounce);
  op.bounce = nullptr;
}

void ExecuteMemoryOp(Op& op) {
  if (op.kind == OpKind::kCopy && op.len > 0) std::memmove(op.mem, op.src, op.len);
  op.done = op.len;
}

void CompleteOp(Op& op) {
  ReleaseBounce(op);
  if (op.wantCrc && op.err == 0 && !op.crcDone) op.crc = Crc32c(0, op.mem, op.done);
  Batch* batch = op.batch;
  if (batch->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) batch->sink->Post(batch);
}

}  // namespace kvtier
