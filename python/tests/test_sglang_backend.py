"""kvtier.sglang.KvtierStorage as SGLang's HiCache would drive it, against a real `kvtier serve`.

The stand-in host pool has the attributes SGLang's MHATokenToKVPoolHost exposes (kv_buffer in the
layer_first / page_first / page_first_direct layouts of memory_pool_host.py, page_size, layout);
the backend is built as StorageBackendFactory builds a `dynamic` backend (read at SGLang commit
001067fffe33): import module_path, take class_name, call it with (storage_config, kwargs), then
register_mem_pool_host. Every page loaded is compared with the page that was saved.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _adapters_support import ARRAY_KINDS, SharedMemory, Sidecar, bits, torch

LAYERS, PAGE, HEADS, DIM, TOKENS = 2, 4, 2, 32, 64
PAGE_BYTES = 2 * LAYERS * PAGE * HEADS * DIM * 2
LAYOUTS = ["layer_first", "page_first", "page_first_direct"]


@dataclass
class StorageConfig:  # HiCacheStorageConfig's fields
    tp_rank: int
    tp_size: int
    pp_rank: int = 0
    pp_size: int = 1
    attn_cp_rank: int = 0
    attn_cp_size: int = 1
    is_mla_model: bool = False
    enable_storage_metrics: bool = False
    is_page_first_layout: bool = False
    model_name: str | None = "org/test-model"
    extra_config: dict[str, Any] | None = field(default_factory=dict)


class HostPool:
    """SGLang's MHA host pool, as much of it as a storage backend sees."""

    def __init__(self, layout: str, kind: str, shared: bool) -> None:
        self.layout, self.page_size, self.size = layout, PAGE, TOKENS
        self.layer_num, self.head_num, self.head_dim = LAYERS, HEADS, DIM
        dims = {
            "layer_first": (2, LAYERS, TOKENS, HEADS, DIM),
            "page_first": (2, TOKENS, LAYERS, HEADS, DIM),
            "page_first_direct": (2, TOKENS // PAGE, LAYERS, PAGE, HEADS, DIM),
        }[layout]
        if shared:  # an allocator that puts the pool in shared memory (SGLang's shm allocators)
            self.memory = SharedMemory(int(np.prod(dims)) * 2, "sglang-host")
            self.kv_buffer = self.memory.view(0, dims, kind)
        elif kind == "torch":
            self.kv_buffer = torch.empty(dims, dtype=torch.bfloat16)
        else:
            self.kv_buffer = np.empty(dims, dtype=np.uint16)
        bits(self.kv_buffer)[...] = np.random.default_rng(3).integers(0, 1 << 16, dims, dtype=np.uint16)

    def page(self, p: int) -> np.ndarray:
        """Page ``p`` as (kv, layer, token, head, dim) bits (a view)."""
        b = bits(self.kv_buffer)
        if self.layout == "layer_first":
            return b[:, :, p * PAGE : (p + 1) * PAGE]
        if self.layout == "page_first":
            return b[:, p * PAGE : (p + 1) * PAGE].transpose(0, 2, 1, 3, 4)
        return b[:, p]

    def indices(self, pages: list[int]) -> Any:
        idx = [p * PAGE + t for p in pages for t in range(PAGE)]
        return torch.tensor(idx, dtype=torch.int64) if torch is not None else np.asarray(idx)


def page_hashes(seed: int, n: int) -> list[str]:
    """Chained page hashes as SGLang's get_hash_str makes them (hex strings)."""
    out, prev = [], b""
    for i in range(n):
        prev = hashlib.sha256(prev + f"{seed}:{i}".encode()).hexdigest().encode()
        out.append(prev.decode())
    return out


def content(key: str) -> np.ndarray:
    seed = int(key[:16], 16)
    return np.random.default_rng(seed).integers(0, 1 << 16, (2, LAYERS, PAGE, HEADS, DIM), dtype=np.uint16)


def make_backend(socket: str, rank: int = 0, world: int = 1, **extra: Any) -> Any:
    config = StorageConfig(rank, world, extra_config={
        "backend_name": "kvtier", "module_path": "kvtier.sglang", "class_name": "KvtierStorage",
        "interface_v1": 1, "socket": socket, "retry_s": 0, "timeout": 10, **extra,
    })  # fmt: skip
    module = importlib.import_module(config.extra_config["module_path"])
    return getattr(module, config.extra_config["class_name"])(config, {})


@pytest.fixture
def sidecar(tmp_path: Path):
    started: list[Sidecar] = []

    def start() -> Sidecar:
        s = Sidecar(tmp_path / f"sidecar{len(started)}", PAGE_BYTES, "1MiB")
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


@pytest.mark.parametrize("kind", ARRAY_KINDS)
@pytest.mark.parametrize("shared", [True, False], ids=["in-place", "staged"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pages_round_trip_through_the_host_pool(sidecar, layout: str, shared: bool, kind: str) -> None:
    side = sidecar()
    host = HostPool(layout, kind, shared)
    backend = make_backend(side.socket, staging_pages=2)  # staged: 5 pages go as 3 batches
    backend.register_mem_pool_host(host)
    assert backend.in_place is shared
    keys = page_hashes(1, 6)
    src = [3, 7, 1, 9, 12]
    for k, p in zip(keys, src):
        host.page(p)[...] = content(k)
    assert backend.batch_exists(keys) == 0
    assert backend.batch_set_v1(keys[:5], host.indices(src)) == [True] * 5
    assert backend.batch_exists(keys) == 5  # the sixth was never stored
    assert backend.exists(keys[0]) and not backend.exists(keys[5])
    assert backend.batch_set_v1(keys[:2], host.indices(src[:2])) == [True, True]  # already held

    dst = [2, 4, 6, 8, 10]
    before = [host.page(p).copy() for p in (11, 13)]
    assert backend.batch_get_v1(keys[:5], host.indices(dst)) == [True] * 5
    for k, p in zip(keys, dst):
        assert np.array_equal(host.page(p), content(k)), f"page {p} ({layout})"
    # A page kvtier lacks is reported and its host page left as it was.
    got = backend.batch_get_v1([keys[0], keys[5]], host.indices([11, 13]))
    assert got == [True, False]
    assert np.array_equal(host.page(11), content(keys[0]))
    assert np.array_equal(host.page(13), before[1])
    backend.close()


@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_ranks_keep_their_own_pages(sidecar, kind: str) -> None:
    side = sidecar()
    hosts = [HostPool("layer_first", kind, True) for _ in range(2)]
    backends = [make_backend(side.socket, rank, 2) for rank in range(2)]
    for b, h in zip(backends, hosts):
        b.register_mem_pool_host(h)
    keys = page_hashes(2, 3)
    for k, p in zip(keys, [0, 1, 2]):
        hosts[0].page(p)[...] = content(k)
    assert backends[0].batch_set_v1(keys, hosts[0].indices([0, 1, 2])) == [True] * 3
    assert backends[0].batch_exists(keys) == 3
    assert backends[1].batch_exists(keys) == 0  # rank 1 holds another shard of these tokens
    assert backends[1].batch_get_v1(keys, hosts[1].indices([5, 6, 7])) == [False] * 3
    for b in backends:
        b.close()


def test_sidecar_killed_fails_pages_and_recovers(sidecar) -> None:
    side = sidecar()
    host = HostPool("page_first", "numpy", True)
    backend = make_backend(side.socket)
    backend.register_mem_pool_host(host)
    keys = page_hashes(3, 2)
    for k, p in zip(keys, [0, 1]):
        host.page(p)[...] = content(k)
    assert backend.batch_set_v1(keys, host.indices([0, 1])) == [True, True]
    side.kill()
    before = host.page(4).copy()
    assert backend.batch_get_v1(keys, host.indices([4, 5])) == [False, False]
    assert np.array_equal(host.page(4), before)
    assert backend.batch_exists(keys) == 0
    assert backend.batch_set_v1(keys, host.indices([0, 1])) == [False, False]
    side2 = sidecar()  # a new sidecar elsewhere: point the backend at it (same path in real use)
    backend.link.path = side2.socket
    assert backend.batch_set_v1(keys, host.indices([0, 1])) == [True, True]
    assert backend.batch_get_v1(keys, host.indices([4, 5])) == [True, True]
    assert np.array_equal(host.page(5), content(keys[1]))
    backend.close()


def test_refuses_configurations_it_cannot_serve(sidecar) -> None:
    from kvtier.sglang import KvtierStorage

    side = sidecar()
    with pytest.raises(ValueError, match="interface_v1"):
        KvtierStorage(StorageConfig(0, 1, extra_config={"socket": side.socket}), {})
    with pytest.raises(ValueError, match="MLA"):
        KvtierStorage(StorageConfig(0, 1, is_mla_model=True, extra_config={"interface_v1": 1}), {})
