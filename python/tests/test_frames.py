"""The frame codec (docs/engine-channel.md, Frames)."""

from __future__ import annotations

import struct

import pytest

from kvtier import KvtierError
from kvtier.frames import MAX_BODY, decode_body, encode_frame, read_frame


def reader(data: bytes):
    pos = [0]

    def read_exactly(n: int) -> bytes | None:
        if pos[0] == len(data):
            return None
        chunk = data[pos[0] : pos[0] + n]
        pos[0] += len(chunk)
        return chunk if len(chunk) == n else None

    return read_exactly


def test_layout_of_a_frame() -> None:
    frame = encode_frame({"op": "lookup", "id": 7}, b"\x01\x02\x03")
    body, head = struct.unpack_from("<II", frame)
    header = b'{"op":"lookup","id":7}'
    assert head == len(header) and body == 4 + len(header) + 3 == len(frame) - 4
    assert frame[8 : 8 + head] == header and frame[8 + head :] == b"\x01\x02\x03"


def test_round_trip_of_frames_back_to_back() -> None:
    frames = [({"id": i, "ok": True, "x": "é" * i}, bytes(range(i))) for i in range(1, 5)]
    read = reader(b"".join(encode_frame(h, p) for h, p in frames))
    assert [read_frame(read) for _ in frames] == frames
    assert read_frame(read) is None


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("<I", MAX_BODY + 1),  # past the limit
        struct.pack("<I", 2) + b"ab",  # no room for the header length
        struct.pack("<II", 8, 10) + b"abcd",  # header longer than the body
        struct.pack("<II", 7, 3) + b"{x}",  # not JSON
        struct.pack("<II", 6, 2) + b"[]",  # not an object
        struct.pack("<II", 20, 2) + b"{}",  # the stream ends inside the frame
    ],
)
def test_malformed_frames_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(KvtierError) as e:
        read_frame(reader(data))
    assert e.value.code == "KVTIER_PROTOCOL"


def test_decode_body_splits_header_and_payload() -> None:
    assert decode_body(struct.pack("<I", 2) + b"{}xyz") == ({}, b"xyz")
