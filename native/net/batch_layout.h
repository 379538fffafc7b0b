// The frame-layout hook: the only place the TCP transport reads what a frame's metadata means.
// Everything else it does is framing (a header, a metadata section, a payload) and leaves meaning
// to lib/peer/. Two things cannot wait for JavaScript, because they decide where bytes go or
// whether a socket is read on while the frame is still arriving, so they read the batch layouts
// of docs/protocol.md ("Batches") here:
//   - placing an answer's payload into destinations given ahead (send()'s expectation): which
//     entries of its result batch own a block (MatchPlacement);
//   - backpressure for a request that causes a large answer (setLimits()'s answer type): how many
//     keys its key batch names (AnswerBytes).
// Which frame types these apply to is JavaScript's to say (the expectation's type, the answer
// type); the transport knows no message type by name. A change to the batch layouts in
// docs/protocol.md changes this file and lib/peer/protocol.ts, and nothing else in native/.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "frame_reader.h"

namespace kvtier {

// Both batches: a u32 count, a reserved u32, then fixed-size entries.
inline constexpr size_t kBatchFixedBytes = 8;
inline constexpr size_t kKeyEntryBytes = 40;    // key batch (requests)
inline constexpr size_t kResultEntryBytes = 8;  // result batch (answers): status is byte 0
inline constexpr uint8_t kResultStatusOk = 0;   // the entry's block is in the payload

// The answer to a request whose destinations were given ahead (one per key of the request, in
// order): every result entry with status OK owns its destination's worth of payload, in order.
// Fills *place with the destinations that receive bytes, or returns false with *why when the
// answer's count or payload length does not match.
bool MatchPlacement(const std::vector<uint8_t>& meta, const std::vector<ByteSpan>& expect,
                    uint64_t payloadLen, std::vector<ByteSpan>* place, std::string* why);

// The most answer bytes a request with a key batch can cause: its count of keys, no more than its
// metadata holds, times `unit` (the block size).
uint64_t AnswerBytes(const std::vector<uint8_t>& meta, uint64_t unit);

}  // namespace kvtier
