// One descriptor of a batch as the engines see it, and the batch that owns it.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

namespace kvtier {

// kCopy copies between two memory targets; kChecksum only checksums a memory range. Both run on
// engine threads so large copies and checksums never stall the event loop.
enum class OpKind : uint8_t { kRead = 0, kWrite = 1, kSync = 2, kCopy = 3, kChecksum = 4 };
// Flag on the op code: also return the CRC-32C of the bytes moved (kChecksum always does).
inline constexpr int kOpCrcFlag = 0x10;

struct Batch;

struct Op {
  OpKind kind = OpKind::kRead;
  int fd = -1;
  uint8_t* mem = nullptr;        // caller memory (stays valid: the batch holds its owner)
  const uint8_t* src = nullptr;  // kCopy: where the bytes come from (mem is the destination)
  uint64_t len = 0;
  uint64_t offset = 0;        // file offset
  uint32_t align = 1;         // O_DIRECT offset alignment of fd (1 when buffered)
  uint32_t bounceAlign = 0;   // nonzero: mem is misaligned for O_DIRECT, go through a bounce buffer
  uint8_t* bounce = nullptr;  // owned while the op runs
  uint64_t done = 0;          // bytes transferred so far
  int err = 0;                // errno of the failure, 0 when none
  bool wantCrc = false;
  bool crcDone = false;    // crc was computed alongside the transfer (a write's source bytes)
  bool crcBeside = false;  // the checksum runs beside the transfer (io_uring writes)
  uint32_t crc = 0;        // CRC-32C of mem[0, done) once complete, when wantCrc
  // Parts still running when the checksum runs beside the transfer (2, then 1, then 0); only
  // touched with atomic builtins, since std::atomic would make Op immovable.
  int parts = 1;
  Batch* batch = nullptr;
};

// Receives a batch once every op in it has finished (called on an engine thread).
class CompletionSink {
 public:
  virtual ~CompletionSink() = default;
  virtual void Post(Batch* batch) = 0;
};

struct Batch {
  std::vector<Op> ops;
  std::atomic<size_t> remaining{0};
  CompletionSink* sink = nullptr;
  // Anything the ops point into stays alive while they run (memory, file descriptors, JS buffers).
  std::vector<std::shared_ptr<void>> keepAlive;
};

// Largest single read/write handed to the kernel: Linux caps one call at just under 2 GiB and
// io_uring lengths are 32-bit.
inline constexpr uint64_t kMaxChunk = uint64_t{1} << 30;

// Prepares the bounce buffer of a misaligned op; false (with op.err set) when memory is short.
bool AcquireBounce(Op& op);
// Copies a read's bytes out of its bounce buffer and frees it.
void ReleaseBounce(Op& op);
// Runs a kCopy or kChecksum op (pure memory work) to completion.
void ExecuteMemoryOp(Op& op);
// Marks an op finished; the last op of a batch hands the batch to its sink.
void CompleteOp(Op& op);
// Whether a read that stopped short at `done` bytes reached end of file: for O_DIRECT, a position
// that is no longer aligned can only come from EOF and cannot be read from again.
inline bool ShortReadEnds(const Op& op) { return (op.offset + op.done) % op.align != 0; }

}  // namespace kvtier
