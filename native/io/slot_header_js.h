// decodeSlotHeaders for lib/warehouse/file-tier.ts: the scan of a file tier's header table.
#pragma once
#include <napi.h>

namespace kvtier {

// decodeSlotHeaders(data: Uint8Array, headerBytes: number, blockBytes: number) ->
//   { status: Uint8Array, keyLength: Uint8Array, keys: Buffer (32 bytes a slot),
//     length: Float64Array, checksum: Uint32Array, generation: Float64Array }
// One entry per whole header in data; status is a SlotStatus (io/slot_header.h).
Napi::Value DecodeSlotHeadersJs(const Napi::CallbackInfo& info);

}  // namespace kvtier
