"""Sessions and hints from the Python client (docs/policies.md, "Hints through the API") against a
real `kvtier serve --policy return-time`: a 'closed' hint on a save, or on a load, decides which
chain is evicted first (and without it the older chain goes), and bad values are refused before
anything is sent, with the store unchanged."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import Sidecar

from kvtier import EngineClient, KvtierError, chain_keys, kv_layout

SIZES = {"num_layers": 2, "block_tokens": 8, "kv_heads": 2, "head_dim": 32, "dtype": "bf16"}
BLOCK_BYTES = 4096
# The server's one tier holds 8 blocks: chains B and A (3 each) fit, C (4) needs room for 2.
HOST_BLOCKS = 8

Start = Callable[..., Sidecar]


def chain(seed: int, blocks: int) -> list[bytes]:
    r = random.Random(seed)
    return chain_keys([r.getrandbits(32) for _ in range(blocks * SIZES["block_tokens"])], SIZES["block_tokens"])


def code_of(call: Callable[[], object]) -> str:
    with pytest.raises(KvtierError) as e:
        call()
    return e.value.code


def replay(sidecars: Start, via: str, hinted: bool) -> dict[str, list[bool]]:
    """B is saved, then A (each its own session); A's request ends with `hint` on its save or on a
    load of it; then C, in a third session, makes room. Per chain: which keys are still held."""
    server = sidecars(BLOCK_BYTES, str(HOST_BLOCKS * BLOCK_BYTES), "--policy", "return-time")
    hint: dict[str, Any] = {"hint": "closed"} if hinted else {}
    a, b, c = chain(1, 3), chain(2, 3), chain(3, 4)
    with EngineClient.connect(server.socket) as client:
        pool = client.register_host_pool(kv_layout("kv-first", **SIZES, num_blocks=8))
        pool.array[:] = np.random.default_rng(5).integers(0, 256, pool.array.size, dtype=np.uint8)
        assert client.save(pool, b, [0, 1, 2], session="sB", request="rB").stored == 3
        saved = client.save(pool, a, [3, 4, 5], session="sA", request="rA", **(hint if via == "save" else {}))
        assert saved.stored == 3
        if via == "load":
            assert client.load(pool, a, [3, 4, 5], session="sA", **hint).prefix == 3
        assert client.save(pool, c, [0, 1, 2, 3], session="sC", request="rC").stored == 4
        return {name: client.lookup(keys).present for name, keys in (("a", a), ("b", b), ("c", c))}


@pytest.mark.parametrize("via", ["save", "load"])
def test_a_closed_hint_decides_what_is_evicted_first(sidecars: Start, via: str) -> None:
    hinted = replay(sidecars, via, True)
    plain = replay(sidecars, via, False)
    for r in (hinted, plain):
        assert r["c"] == [True] * 4
    # With the hint, A (the newer chain) lost blocks, deepest first, and B kept all of its own.
    assert hinted["a"][0] and not all(hinted["a"])
    assert all(hinted["b"])
    # Without it, the reverse: the outcome above is the hint's doing.
    assert plain["b"][0] and not all(plain["b"])
    assert all(plain["a"])


def test_bad_values_are_refused_before_sending(sidecars: Start) -> None:
    server = sidecars(BLOCK_BYTES)
    keys = chain(9, 2)
    with EngineClient.connect(server.socket) as client:
        pool = client.register_host_pool(kv_layout("kv-first", **SIZES, num_blocks=4))
        before = pool.array.copy()
        bad: list[dict[str, Any]] = [
            {"hint": "later"},
            {"hint": 1},
            {"session": ""},
            {"session": "s" * 257},
            {"session": "\U0001f600" * 129},  # 258 UTF-16 code units, as the server counts
            {"session": 1.5},
            {"session": True},
            {"session": 2**53},
            {"request": "\ud800"},
            {"request": [1]},
        ]
        for fields in bad:
            assert code_of(lambda: client.save(pool, keys, [0, 1], **fields)) == "KVTIER_BAD_ARGUMENT"
            assert code_of(lambda: client.load(pool, keys, [2, 3], **fields)) == "KVTIER_BAD_ARGUMENT"
            assert code_of(lambda: client.lookup(keys, **fields)) == "KVTIER_BAD_ARGUMENT"
        assert np.array_equal(pool.array, before)
        assert client.lookup(keys).present == [False, False]
        # Well-formed values go through: the longest ids, integers, both hints.
        good: dict[str, Any] = {"session": "\U0001f600" * 128, "request": -(2**53 - 1), "hint": "soon"}
        assert client.save(pool, keys, [0, 1], **good).stored == 2
        assert client.lookup(keys, **good).prefix == 2
        assert client.load(pool, keys, [2, 3], session=7, hint="closed").prefix == 2
        assert server.alive()
