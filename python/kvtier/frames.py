"""The engine channel's frame codec (docs/engine-channel.md): lengths, a JSON header, a payload.

```
u32 LE bodyLength   (4 + headerLength + payload length; at most 64 MiB)
u32 LE headerLength
header              UTF-8 JSON object
payload             raw bytes
```
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

from .errors import PROTOCOL, KvtierError

__all__ = ["MAX_BODY", "encode_frame", "decode_body", "read_frame"]

MAX_BODY = 64 * 1024 * 1024
_U32 = struct.Struct("<I")
_TWO_U32 = struct.Struct("<II")


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One frame, ready to send."""
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    body = 4 + len(head) + len(payload)
    if body > MAX_BODY:
        raise KvtierError(PROTOCOL, f"a frame of {body} bytes is past the {MAX_BODY}-byte limit")
    return _TWO_U32.pack(body, len(head)) + head + payload


def decode_body(body: bytes) -> tuple[dict[str, Any], bytes]:
    """Splits a frame's body (everything after bodyLength) into its header and payload."""
    if len(body) < 4:
        raise KvtierError(PROTOCOL, f"a frame body of {len(body)} bytes has no header length")
    (head_len,) = _U32.unpack_from(body)
    if head_len > len(body) - 4:
        raise KvtierError(PROTOCOL, f"header length {head_len} is past the body's {len(body)} bytes")
    try:
        header = json.loads(body[4 : 4 + head_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise KvtierError(PROTOCOL, f"frame header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise KvtierError(PROTOCOL, "frame header is not a JSON object")
    return header, body[4 + head_len :]


def read_frame(read_exactly: Callable[[int], bytes | None]) -> tuple[dict[str, Any], bytes] | None:
    """Reads one frame through ``read_exactly(n)``; None at a clean end of stream."""
    prefix = read_exactly(4)
    if prefix is None:
        return None
    (body_len,) = _U32.unpack(prefix)
    if body_len < 4 or body_len > MAX_BODY:
        raise KvtierError(PROTOCOL, f"frame body length {body_len} is outside 4..{MAX_BODY}")
    body = read_exactly(body_len)
    if body is None:
        raise KvtierError(PROTOCOL, "the stream ended inside a frame")
    return decode_body(body)
