"""The Python client against a real `kvtier serve --engine-socket`: pools shared by memfd, save,
lookup and load with every byte compared, ranks, disconnects, a sidecar killed, bad input."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import Sidecar, until

from kvtier import EngineClient, HostPool, KvtierError, chain_keys, kv_layout, rank_namespace
from kvtier.pools import Pool, tensor_views

# 2 x layers(2) x tokens(8) x heads(2) x dim(32) x bf16 = 4096 bytes per block.
SIZES = {"num_layers": 2, "block_tokens": 8, "kv_heads": 2, "head_dim": 32, "dtype": "bf16"}
BLOCK_BYTES = 4096
FORMS = ["kv-first", "block-first", "separate", "stacked"]

Start = Callable[..., Sidecar]


def layout(form: str = "kv-first", num_blocks: int = 32, **over: Any) -> dict[str, Any]:
    return kv_layout(form, **{**SIZES, "num_blocks": num_blocks, **over})


def block_axis(pool: HostPool) -> int:
    """Which axis of each tensor view indexes engine blocks."""
    form = pool.layout["form"]
    if form == "stacked":
        return list(pool.layout.get("order") or ["layer", "kv", "block", "token", "head", "dim"]).index("block")
    return {"kv-first": 1, "block-first": 0, "separate": 0}[form]


def block_index(pool: HostPool, view: np.ndarray, block: int) -> tuple[Any, ...]:
    index: list[Any] = [slice(None)] * view.ndim
    index[block_axis(pool)] = block
    return tuple(index)


def block_of(pool: HostPool, block: int, data: np.ndarray | None = None) -> list[np.ndarray]:
    """Copies of every byte of one engine block, tensor by tensor (of the pool, or of ``data``)."""
    views = tensor_views(pool.array if data is None else data, pool.layout)
    return [v[block_index(pool, v, block)].copy() for v in views]


def put_block(pool: HostPool, data: np.ndarray, block: int, content: list[np.ndarray]) -> None:
    """Writes one engine block's tensors into ``data``, a buffer laid out like the pool."""
    for view, part in zip(tensor_views(data, pool.layout), content):
        view[block_index(pool, view, block)] = part


def same_block(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def fill_random(pool: HostPool, rng: np.random.Generator) -> None:
    pool.array[:] = rng.integers(0, 256, pool.array.size, dtype=np.uint8)


def tokens(seed: int, blocks: int) -> list[int]:
    r = random.Random(seed)
    return [r.getrandbits(32) for _ in range(blocks * SIZES["block_tokens"])]


def code_of(call: Callable[[], object]) -> str:
    with pytest.raises(KvtierError) as e:
        call()
    return e.value.code


# --- the happy path, every byte compared ------------------------------------------------------


def test_host_pool_is_shared_by_memfd(sidecars: Start) -> None:
    server = sidecars(BLOCK_BYTES)
    with EngineClient.connect(server.socket, name="memfd-test") as client:
        assert (client.block_bytes, client.server_pid) == (BLOCK_BYTES, server.pid)
        assert client.max_batch >= 1
        pool = client.register_host_pool(layout(num_blocks=16), name="shared")
        assert (pool.num_blocks, pool.block_bytes) == (16, BLOCK_BYTES)
        # The server mapped this very memfd (its inode), not a copy of it.
        inode = os.fstat(pool.fd).st_ino
        with open(f"/proc/{server.pid}/maps") as maps:
            assert any("memfd:kvtier-shared" in line and f" {inode} " in line for line in maps)


@pytest.mark.parametrize("form", FORMS)
def test_save_lookup_load_compares_every_byte(sidecars: Start, form: str) -> None:
    server = sidecars(BLOCK_BYTES)
    rng = np.random.default_rng(7)
    with EngineClient.connect(server.socket) as client:
        pool = client.register_host_pool(layout(form), name=f"pool-{form}")
        fill_random(pool, rng)
        keys = chain_keys(tokens(1, 6), SIZES["block_tokens"])
        sources = [3, 0, 9, 4, 17, 31]
        originals = [block_of(pool, b) for b in sources]

        saved = client.save(pool, keys, sources)
        assert saved.status == ["stored"] * 6 and (saved.stored, saved.present, saved.rejected) == (6, 0, 0)
        again = client.save(pool, keys[:2], sources[:2])
        assert again.status == ["present"] * 2 and again.present == 2

        unknown = chain_keys(tokens(2, 1), SIZES["block_tokens"])[0]
        found = client.lookup([*keys, unknown])
        assert found.prefix == 6 and found.present == [True] * 6 + [False]
        assert client.lookup([unknown, *keys]).prefix == 0

        # Other random bytes everywhere, then load into other blocks, the unknown key among them.
        fill_random(pool, rng)
        before = pool.array.copy()
        targets = [20, 21, 5, 6, 7, 11]
        destination = [*targets[:3], 30, *targets[3:]]
        result = client.load(pool, [*keys[:3], unknown, *keys[3:]], destination)
        assert result.loaded == [True, True, True, False, True, True, True] and result.prefix == 3
        for original, target in zip(originals, targets):
            assert same_block(block_of(pool, target), original)
        # Every other byte is as it was (block 30 too: its key was missing).
        expected = before.copy()
        for original, target in zip(originals, targets):
            put_block(pool, expected, target, original)
        assert np.array_equal(pool.array, expected)


def test_blocks_move_between_layouts_of_one_packing(sidecars: Start) -> None:
    server = sidecars(BLOCK_BYTES)
    rng = np.random.default_rng(11)
    with EngineClient.connect(server.socket) as vllm, EngineClient.connect(server.socket) as sglang:
        src = vllm.register_host_pool(layout("kv-first"), name="flash")
        dst = sglang.register_host_pool(layout("separate"), name="pages")
        fill_random(src, rng)
        keys = chain_keys(tokens(3, 4), SIZES["block_tokens"])
        assert vllm.save(src, keys, [1, 2, 3, 4]).stored == 4
        assert sglang.load(dst, keys, [8, 9, 10, 11]).prefix == 4
        for s, d in zip([1, 2, 3, 4], [8, 9, 10, 11]):
            # kv-first per layer [2, ...] vs separate per layer K, V: the same slabs in the same order.
            src_slabs = [x for t in block_of(src, s) for x in (t[0], t[1])]
            assert all(np.array_equal(a, b) for a, b in zip(src_slabs, block_of(dst, d)))


def test_ranks_keep_their_blocks_apart(sidecars: Start) -> None:
    server = sidecars(BLOCK_BYTES)
    world, prompt = 2, tokens(4, 5)
    rng = np.random.default_rng(5)
    clients = [EngineClient.connect(server.socket, name=f"rank{r}") for r in range(world)]
    try:
        pools = [c.register_host_pool(layout(), name="kv") for c in clients]  # one name per connection
        keys = [chain_keys(prompt, SIZES["block_tokens"], rank_namespace("model", r, world)) for r in range(world)]
        assert set(keys[0]).isdisjoint(keys[1])
        originals = []
        for client, pool, k in zip(clients, pools, keys):
            fill_random(pool, rng)
            originals.append([block_of(pool, b) for b in range(5)])
            assert client.save(pool, k, list(range(5))).stored == 5
        for r, (client, pool) in enumerate(zip(clients, pools)):
            pool.array[:] = 0
            assert client.load(pool, keys[r], list(range(10, 15))).prefix == 5
            for b in range(5):
                assert same_block(block_of(pool, 10 + b), originals[r][b])
                assert not same_block(block_of(pool, 10 + b), originals[1 - r][b])
    finally:
        for c in clients:
            c.close()


def test_concurrent_calls_from_threads_each_get_their_answer(sidecars: Start) -> None:
    server = sidecars(BLOCK_BYTES)
    rng = np.random.default_rng(3)
    with EngineClient.connect(server.socket) as client:
        pool = client.register_host_pool(layout(num_blocks=64))
        fill_random(pool, rng)
        originals = [block_of(pool, b) for b in range(32)]
        chains = [chain_keys(tokens(100 + t, 4), SIZES["block_tokens"]) for t in range(8)]
        failures: list[BaseException] = []

        def worker(t: int) -> None:
            try:
                blocks = list(range(4 * t, 4 * t + 4))
                assert client.save_async(pool, chains[t], blocks).result(30).stored == 4
                back = [32 + b for b in blocks]
                assert client.load_async(pool, chains[t], back).result(30).prefix == 4
            except BaseException as e:
                failures.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert failures == []
        for b in range(32):
            assert same_block(block_of(pool, 32 + b), originals[b])


def test_stats_pin_and_release(sidecars: Start) -> None:
    server = sidecars(BLOCK_BYTES)
    with EngineClient.connect(server.socket) as client:
        pool = client.register_host_pool(layout())
        keys = chain_keys(tokens(6, 2), SIZES["block_tokens"])
        client.save(pool, keys, [0, 1])
        stats = client.stats()
        assert "stats" in stats and "engine" in stats
        assert stats["stats"]["blocks"] >= 2
        lease = client.pin(keys, ttl_ms=60_000)
        assert isinstance(lease, int)
        client.unpin(lease)
        client.release(pool)
        # docs/engine-channel.md names no code for a released pool: an unknown name, or closed.
        assert code_of(lambda: client.save(pool, keys, [0, 1])) in ("KVTIER_BAD_ARGUMENT", "KVTIER_CLOSED")
        assert not client.closed
        # A released pool's name may be registered again.
        again = client.register_host_pool(layout(), name=pool.name)
        assert client.load(again, keys, [2, 3]).prefix == 2


# --- failures ---------------------------------------------------------------------------------


def test_engine_disconnecting_mid_save_leaves_the_server_serving(sidecars: Start) -> None:
    server = sidecars(BLOCK_BYTES, "64MiB")
    rng = np.random.default_rng(9)
    first = EngineClient.connect(server.socket, name="leaving")
    pool = first.register_host_pool(layout(num_blocks=256))
    fill_random(pool, rng)
    kept = chain_keys(tokens(7, 4), SIZES["block_tokens"])
    kept_bytes = [block_of(pool, b) for b in range(4)]
    assert first.save(pool, kept, list(range(4))).stored == 4
    # Saves in flight, then the engine goes away without waiting for them.
    pending = []
    for i in range(8):
        keys = chain_keys(tokens(1000 + i, 32), SIZES["block_tokens"])
        pending.append(first.save_async(pool, keys, list(range(32 * i, 32 * i + 32))))
    first.close()
    for fut in pending:
        try:
            fut.result(30)
        except KvtierError as e:
            assert e.code == "KVTIER_CLOSED"
    pool.close()

    assert server.alive()
    with EngineClient.connect(server.socket, name="next") as second:
        other = second.register_host_pool(layout(num_blocks=16))
        # The blocks the first engine saved outlive its registrations.
        assert second.load(other, kept, [8, 9, 10, 11]).prefix == 4
        for b, original in zip([8, 9, 10, 11], kept_bytes):
            assert same_block(block_of(other, b), original)
        fill_random(other, rng)
        fresh = chain_keys(tokens(8, 2), SIZES["block_tokens"])
        fresh_bytes = [block_of(other, b) for b in (0, 1)]
        assert second.save(other, fresh, [0, 1]).stored == 2
        assert second.load(other, fresh, [14, 15]).prefix == 2
        assert same_block(block_of(other, 14), fresh_bytes[0]) and same_block(block_of(other, 15), fresh_bytes[1])


def test_sidecar_killed_while_loads_wait(sidecars: Start) -> None:
    server = sidecars(BLOCK_BYTES)
    rng = np.random.default_rng(13)
    client = EngineClient.connect(server.socket)
    pool = client.register_host_pool(layout(num_blocks=32))
    fill_random(pool, rng)
    keys = chain_keys(tokens(9, 8), SIZES["block_tokens"])
    assert client.save(pool, keys, list(range(8))).stored == 8
    pool.array[:] = 0xA5
    # Stopped, the sidecar cannot answer: the loads are surely waiting when it dies.
    server.stop()
    loads = [client.load_async(pool, keys[i : i + 2], [16 + i, 17 + i]) for i in range(0, 8, 2)]
    server.kill()
    for fut in loads:
        with pytest.raises(KvtierError) as e:
            fut.result(30)  # a deadline against hanging, not a timing assertion
        assert e.value.code == "KVTIER_CLOSED"
    assert client.closed
    assert code_of(lambda: client.load(pool, keys, list(range(16, 24)))) == "KVTIER_CLOSED"
    assert code_of(lambda: client.lookup(keys)) == "KVTIER_CLOSED"
    assert np.all(pool.array == 0xA5)  # nothing was written, and nothing was reported loaded
    client.close()
    pool.close()


def test_sidecar_killed_during_a_load_never_reports_wrong_bytes(sidecars: Start) -> None:
    server = sidecars(BLOCK_BYTES, "64MiB")
    rng = np.random.default_rng(17)
    client = EngineClient.connect(server.socket)
    pool = client.register_host_pool(layout(num_blocks=256))
    fill_random(pool, rng)
    keys = chain_keys(tokens(10, 128), SIZES["block_tokens"])
    originals = [block_of(pool, b) for b in range(128)]
    assert client.save(pool, keys, list(range(128))).stored == 128
    pool.array[:] = 0
    fut = client.load_async(pool, keys, list(range(128, 256)))
    server.kill()
    try:
        result = fut.result(30)
    except KvtierError as e:
        assert e.code == "KVTIER_CLOSED"  # the engine recomputes every block
    else:
        # The load won the race: whatever it reports loaded holds the saved bytes.
        for i, ok in enumerate(result.loaded):
            if ok:
                assert same_block(block_of(pool, 128 + i), originals[i])
    until("the client to see the connection close", lambda: client.closed)
    client.close()
    pool.close()


class AliasPool(Pool):
    """A second registration of another pool's memory, under another name."""

    def __init__(self, other: HostPool, name: str) -> None:
        super().__init__(name, other.layout)
        self.other = other

    def memory(self) -> dict[str, Any]:
        return self.other.memory()

    def wire_layout(self) -> dict[str, Any]:
        return self.other.wire_layout()


def test_bad_input_gets_codes_and_the_server_keeps_serving(sidecars: Start) -> None:
    server = sidecars(BLOCK_BYTES)
    rng = np.random.default_rng(19)
    with EngineClient.connect(server.socket) as client, EngineClient.connect(server.socket) as bystander:
        pool = client.register_host_pool(layout(num_blocks=8))
        fill_random(pool, rng)
        keys = chain_keys(tokens(11, 2), SIZES["block_tokens"])
        bad = "KVTIER_BAD_ARGUMENT"

        assert code_of(lambda: client.lookup([b"k" * 8])) == bad  # keys of 8 bytes: under 16
        assert code_of(lambda: client.lookup([b"k" * 33])) == bad
        assert code_of(lambda: client.save(pool, [k[:8] for k in keys], [0, 1])) == bad
        assert code_of(lambda: client.save(pool, keys, [0, 8])) == bad  # block 8 of 8
        assert code_of(lambda: client.load(pool, keys, [-1, 0])) == bad
        assert code_of(lambda: client.save(pool, keys, [0])) == bad  # one block for two keys
        assert client.lookup(keys).present == [False, False]  # nothing of the refused saves stored

        wrong = layout(num_blocks=8, head_dim=8)  # 1024-byte blocks on a 4096-byte server
        assert code_of(lambda: client.register_host_pool(wrong, name="small")) == bad
        assert code_of(lambda: client.register_host_pool(layout(num_blocks=8), name=pool.name)) == bad
        assert code_of(lambda: client._register(AliasPool(pool, "alias"))) == bad
        assert code_of(lambda: bystander._register(AliasPool(pool, "stolen"))) == bad

        short = dict(layout(num_blocks=8), extent=BLOCK_BYTES)  # a memfd smaller than the layout
        assert code_of(lambda: client.register_host_pool(short, name="short")) == bad

        # Neither connection was harmed.
        assert client.save(pool, keys, [0, 1]).stored == 2
        other = bystander.register_host_pool(layout(num_blocks=8), name="bystander")
        assert bystander.load(other, keys, [6, 7]).prefix == 2
        assert same_block(block_of(other, 6), block_of(pool, 0))
        assert server.alive()
