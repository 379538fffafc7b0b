"""EngineClient's connection mechanics against a scripted peer on a socketpair: answers paired by
id in any order, every waiting call failed at once with KVTIER_CLOSED when the connection drops.
(The real server is exercised in test_engine_channel.py.)"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from kvtier import EngineClient, KvtierError, LoadResult
from kvtier.frames import decode_body, encode_frame
from kvtier.pools import Pool


class Peer:
    """The server end of a socketpair, driven step by step by the test."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self) -> tuple[dict[str, Any], bytes]:
        (n,) = struct.unpack("<I", self._exactly(4))
        return decode_body(self._exactly(n))

    def _exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            assert chunk, "the client closed"
            buf += chunk
        return buf

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self.sock.sendall(encode_frame(header, payload))


class FakePool(Pool):
    def __init__(self) -> None:
        super().__init__("kv", {"numBlocks": 8})


@pytest.fixture
def pair() -> Iterator[tuple[EngineClient, Peer]]:
    ours, theirs = socket.socketpair()
    client = EngineClient(ours, timeout=20.0)
    client.max_batch = 4
    peer = Peer(theirs)
    yield client, peer
    client.close()
    theirs.close()


def test_answers_complete_their_own_requests_in_any_order(pair: tuple[EngineClient, Peer]) -> None:
    client, peer = pair
    keys = [bytes([i]) * 32 for i in range(3)]
    a = client.lookup_async(keys)
    b = client.load_async(FakePool(), keys[:2], [5, 6])
    (ha, pa), (hb, pb) = peer.recv(), peer.recv()
    assert (ha["op"], ha["keyBytes"], ha["n"], pa) == ("lookup", 32, 3, b"".join(keys))
    assert (hb["op"], hb["pool"], hb["blocks"], pb) == ("load", "kv", [5, 6], b"".join(keys[:2]))
    peer.send({"id": hb["id"], "ok": True, "loaded": [True, False], "prefix": 1})
    assert b.result(10) == LoadResult([True, False], 1)
    assert not a.done()
    peer.send({"id": ha["id"], "ok": True, "prefix": 0, "present": [False, True, True]})
    assert a.result(10).present == [False, True, True]


def test_a_call_past_max_batch_goes_in_chunks_and_merges(pair: tuple[EngineClient, Peer]) -> None:
    client, peer = pair
    keys = [bytes([i]) * 32 for i in range(6)]
    fut = client.load_async(FakePool(), keys, list(range(6)))
    first, second = peer.recv()[0], peer.recv()[0]
    assert (first["blocks"], second["blocks"]) == ([0, 1, 2, 3], [4, 5])
    peer.send({"id": second["id"], "ok": True, "loaded": [True, True], "prefix": 2})
    peer.send({"id": first["id"], "ok": True, "loaded": [True] * 4, "prefix": 4})
    assert fut.result(10) == LoadResult([True] * 6, 6)


def test_error_answers_carry_the_server_code(pair: tuple[EngineClient, Peer]) -> None:
    client, peer = pair
    fut = client.lookup_async([b"k" * 8])
    header, _ = peer.recv()
    peer.send({"id": header["id"], "ok": False, "code": "KVTIER_BAD_ARGUMENT", "message": "key size"})
    with pytest.raises(KvtierError) as e:
        fut.result(10)
    assert e.value.code == "KVTIER_BAD_ARGUMENT"
    assert not client.closed  # one bad request does not end the connection


def test_connection_loss_fails_every_waiting_call_and_later_ones(pair: tuple[EngineClient, Peer]) -> None:
    client, peer = pair
    futures = [client.load_async(FakePool(), [bytes([i]) * 32], [i]) for i in range(3)]
    errors: list[KvtierError] = []

    def blocking_call() -> None:
        try:
            client.lookup([b"x" * 32])
        except KvtierError as e:
            errors.append(e)

    caller = threading.Thread(target=blocking_call)
    caller.start()
    for _ in range(4):
        peer.recv()
    peer.sock.close()
    caller.join(20)
    for fut in futures:
        with pytest.raises(KvtierError) as e:
            fut.result(20)
        assert e.value.code == "KVTIER_CLOSED"
    assert [e.code for e in errors] == ["KVTIER_CLOSED"]
    assert client.closed
    with pytest.raises(KvtierError) as e:
        client.stats()
    assert e.value.code == "KVTIER_CLOSED"
    assert LoadResult.none(3) == LoadResult([False] * 3, 0)


def test_a_frame_refused_with_id_0_closes_with_the_servers_reason(pair: tuple[EngineClient, Peer]) -> None:
    client, peer = pair
    fut = client.lookup_async([b"y" * 32])
    peer.recv()
    peer.send({"id": 0, "ok": False, "code": "KVTIER_BAD_ARGUMENT", "message": "bad frame"})
    with pytest.raises(KvtierError) as e:
        fut.result(20)
    assert e.value.code == "KVTIER_CLOSED" and "bad frame" in e.value.message


def test_keys_that_cannot_be_encoded_are_refused_here(pair: tuple[EngineClient, Peer]) -> None:
    client, _ = pair
    for keys in ([b"a" * 32, b"b" * 16], ["not bytes"]):
        with pytest.raises(KvtierError) as e:
            client.lookup(keys)  # type: ignore[arg-type]
        assert e.value.code == "KVTIER_BAD_ARGUMENT"
    with pytest.raises(KvtierError) as e:
        client.save(FakePool(), [b"a" * 32], [True])
    assert e.value.code == "KVTIER_BAD_ARGUMENT"
