"""kvtier as an SGLang HiCache storage backend (the L3 below SGLang's host pool), loaded with

    python -m sglang.launch_server --model-path MODEL --enable-hierarchical-cache \
        --hicache-storage-backend dynamic \
        --hicache-storage-backend-extra-config '{"backend_name": "kvtier",
            "module_path": "kvtier.sglang", "class_name": "KvtierStorage",
            "interface_v1": 1, "socket": "/run/kvtier.sock"}'

``interface_v1: 1`` makes SGLang call ``batch_get_v1``/``batch_set_v1`` with host-pool indices
(the page path); without it SGLang would copy every page through the legacy ``batch_get`` /
``batch_set`` calls, which this backend does not serve, so the constructor refuses to start.

Pages move between kvtier and SGLang's host pool without passing through the socket. Where the
host pool lies in a shared file mapping this process holds (SGLang's shared-memory host
allocators), the sidecar maps that very memory and reads and writes pages in place. Otherwise
(torch's pinned memory cannot be shared by file descriptor) the backend registers a small memfd
staging pool and copies each page once between it and the host pool. ``staging_pages`` (default
64) sizes it. Other extra-config keys: ``namespace``, ``timeout``, ``retry_s``. See docs/engines.md.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

import numpy as np

from ._link import Link
from ._memory import FilePool, TensorInfo, byte_view, find_shared_file, register_pool, tensor_info
from .client import EngineClient
from .errors import BAD_ARGUMENT, KvtierError
from .keys import namespace_root, rank_namespace
from .layout import kv_layout, layout_block_bytes
from .pools import HostPool, Pool

try:  # pragma: no cover - SGLang does not install on the machines these tests run on
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage

    HAVE_SGLANG = True
except ImportError:
    HAVE_SGLANG = False

    class HiCacheStorage:  # type: ignore[no-redef]
        """The part of SGLang's HiCacheStorage this backend relies on (hicache_storage.py)."""

        def register_mem_pool_host(self, mem_pool_host: Any) -> None:
            self.mem_pool_host = mem_pool_host

        def clear(self) -> None:
            pass

        def get_stats(self) -> Any:
            return None


__all__ = ["KvtierStorage", "HAVE_SGLANG", "DEFAULT_SOCKET"]

log = logging.getLogger("kvtier")
DEFAULT_SOCKET = "/run/kvtier.sock"
_CANONICAL = ["kv", "layer", "block", "token", "head", "dim"]
_STAGING_ORDER = ["block", "kv", "layer", "token", "head", "dim"]  # a staging slot is one page


def _host_dims(layout: str, shape: tuple[int, ...], strides: tuple[int, ...], page: int) -> tuple[list[str], list[int], list[int]]:
    """SGLang's MHA host buffer as kvtier's six dims: (order, sizes, element strides)."""
    if layout == "layer_first":  # (2, layers, tokens, heads, dim)
        kv, layers, size, heads, dim = shape
        s = strides
        return _CANONICAL, [kv, layers, size // page, page, heads, dim], [s[0], s[1], s[2] * page, s[2], s[3], s[4]]
    if layout == "page_first":  # (2, tokens, layers, heads, dim)
        kv, size, layers, heads, dim = shape
        s = strides
        order = ["kv", "block", "token", "layer", "head", "dim"]
        return order, [kv, size // page, page, layers, heads, dim], [s[0], s[1] * page, s[1], s[2], s[3], s[4]]
    if layout == "page_first_direct":  # (2, pages, layers, page, heads, dim)
        return ["kv", "block", "layer", "token", "head", "dim"], list(shape), list(strides)
    if layout == "page_head":  # (2, pages, heads, page, layers, dim)
        return ["kv", "block", "head", "token", "layer", "dim"], list(shape), list(strides)
    raise KvtierError(BAD_ARGUMENT, f"SGLang host layout {layout!r} is not one kvtier knows")


def _as_list(indices: Any) -> list[int]:
    if hasattr(indices, "tolist"):
        return [int(i) for i in indices.tolist()]
    return [int(i) for i in indices]


class KvtierStorage(HiCacheStorage):  # type: ignore[misc,valid-type]
    """HiCache storage in a kvtier sidecar: ``batch_exists``, ``batch_get_v1``, ``batch_set_v1``."""

    def __init__(self, storage_config: Any, kwargs: Any = None) -> None:
        extra = dict(getattr(storage_config, "extra_config", None) or {})
        if not extra.get("interface_v1"):
            raise ValueError(
                'kvtier.sglang.KvtierStorage serves the page interface only: add "interface_v1": 1 '
                "to --hicache-storage-backend-extra-config"
            )
        if getattr(storage_config, "is_mla_model", False):
            raise ValueError("kvtier.sglang.KvtierStorage does not store MLA (latent) KV caches yet")
        model = (getattr(storage_config, "model_name", None) or "").replace("/", "-")
        ns = f"sglang/{model}" + (f"/{extra['namespace']}" if extra.get("namespace") else "")
        ns = rank_namespace(ns, int(storage_config.tp_rank), int(storage_config.tp_size))
        for part in ("pp", "attn_cp"):
            size = int(getattr(storage_config, f"{part}_size", 1) or 1)
            if size > 1:
                ns += f"/{part}{int(getattr(storage_config, f'{part}_rank'))}of{size}"
        self.namespace = ns
        self._root = namespace_root(ns)
        self.staging_pages = int(extra.get("staging_pages", 64))
        self.link = Link(
            str(extra.get("socket", DEFAULT_SOCKET)),
            f"sglang-tp{storage_config.tp_rank}",
            timeout=float(extra.get("timeout", 30.0)),
            retry_s=float(extra.get("retry_s", 1.0)),
            on_connect=self._register,
        )
        self.mem_pool_host: Any = None
        self.pool: Pool | None = None  # the host pool itself (in place) or the staging pool
        self.in_place = False
        self._spec: dict[str, Any] | None = None
        self._host: np.ndarray | None = None  # (kv, layer, block, token, head, dim) view, bits
        self._stage: np.ndarray | None = None  # (slot, kv, layer, token, head, dim) view, bits
        self._staging_lock = threading.Lock()  # SGLang's prefetch and backup threads share it

    # --- the host pool ----------------------------------------------------------------------

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        super().register_mem_pool_host(mem_pool_host)
        info = tensor_info(mem_pool_host.kv_buffer)
        page = int(mem_pool_host.page_size)
        order, sizes, strides = _host_dims(str(mem_pool_host.layout), info.shape, info.strides, page)
        dims = dict(zip(order, sizes))
        if info.dtype is None or dims["kv"] != 2:
            raise KvtierError(BAD_ARGUMENT, "an SGLang host pool kvtier cannot describe (dtype or shape)")
        self._spec = {
            "form": "stacked",
            "order": order,
            "numLayers": dims["layer"],
            "numBlocks": dims["block"],
            "blockTokens": dims["token"],
            "kvHeads": dims["head"],
            "headDim": dims["dim"],
            "dtype": info.dtype,
            "tensor": {"offset": info.address, "strides": strides},
        }
        six = byte_view(TensorInfo(info.address, tuple(sizes), tuple(strides), info.itemsize, info.dtype, False, None))
        self._host = six.transpose([order.index(d) for d in _CANONICAL])
        self._info = info
        self.link.get()

    def _register(self, client: EngineClient) -> None:
        spec = self._spec
        if spec is None:
            return
        if client.block_bytes != layout_block_bytes(spec):
            raise KvtierError(
                BAD_ARGUMENT,
                f"the sidecar stores {client.block_bytes}-byte blocks, SGLang's pages are "
                f"{layout_block_bytes(spec)}: start kvtier serve with --block-bytes {layout_block_bytes(spec)}",
            )
        shared = find_shared_file(self._info.address, self._info.span)
        if shared is not None:
            tensor = {**spec["tensor"], "offset": shared.offset_of(self._info.address)}
            self.pool = register_pool(client, FilePool(shared, {**spec, "tensor": tensor}, "sglang-host"))
            self.in_place = True
            return
        old, self.pool = self.pool, None
        if isinstance(old, HostPool):
            old.close()
        layout = kv_layout(
            "stacked",
            num_layers=spec["numLayers"],
            num_blocks=self.staging_pages,
            block_tokens=spec["blockTokens"],
            kv_heads=spec["kvHeads"],
            head_dim=spec["headDim"],
            dtype=spec["dtype"],
            order=_STAGING_ORDER,
        )
        staging = client.register_host_pool(layout, name="sglang-staging")
        host = self._host
        assert host is not None
        self._stage = np.ndarray(
            (self.staging_pages, 2, spec["numLayers"], spec["blockTokens"], spec["kvHeads"], spec["headDim"]),
            dtype=host.dtype,
            buffer=staging.array,
        )
        self.pool = staging
        self.in_place = False

    # --- keys and pages ---------------------------------------------------------------------

    def _keys(self, keys: list[str]) -> list[bytes]:
        """SGLang's page hashes, salted with this rank's namespace into 32-byte kvtier keys."""
        return [hashlib.sha256(self._root + str(k).encode("utf-8")).digest() for k in keys]

    def _pages(self, host_indices: Any, n: int) -> list[int]:
        page = int(self.mem_pool_host.page_size)
        tokens = _as_list(host_indices)
        if len(tokens) < n * page:
            raise KvtierError(BAD_ARGUMENT, f"{len(tokens)} host indices for {n} pages of {page}")
        pages = []
        for i in range(n):
            first = tokens[i * page]
            if first % page:
                raise KvtierError(BAD_ARGUMENT, f"host index {first} does not start a page")
            pages.append(first // page)
        return pages

    # --- HiCacheStorage ---------------------------------------------------------------------

    def batch_exists(self, keys: list[str], extra_info: Any = None) -> int:
        """How many leading pages kvtier holds (0 while the sidecar is down)."""
        client = self.link.get()
        if client is None or not keys:
            return 0
        try:
            return client.lookup(self._keys(keys)).prefix
        except KvtierError as e:
            log.warning("kvtier: lookup failed: %s", e)
            return 0

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    def batch_get_v1(self, keys: list[str], host_indices: Any, extra_info: Any = None) -> list[bool]:
        """Loads pages into the host pool: True for each page written with verified bytes."""
        n = len(keys)
        client = self.link.get()
        if client is None or self.pool is None or n == 0:
            return [False] * n
        pages = self._pages(host_indices, n)
        kkeys = self._keys(keys)
        try:
            if self.in_place:
                return list(client.load(self.pool, kkeys, pages).loaded)
            out: list[bool] = []
            with self._staging_lock:
                for lo in range(0, n, self.staging_pages):
                    chunk = pages[lo : lo + self.staging_pages]
                    loaded = client.load(self.pool, kkeys[lo : lo + len(chunk)], list(range(len(chunk)))).loaded
                    for slot, (page, ok) in enumerate(zip(chunk, loaded)):
                        if ok:
                            self._host[:, :, page] = self._stage[slot]  # type: ignore[index]
                    out.extend(loaded)
            return out
        except KvtierError as e:
            log.warning("kvtier: load failed: %s; SGLang recomputes those pages", e)
            return [False] * n

    def batch_set_v1(self, keys: list[str], host_indices: Any, extra_info: Any = None) -> list[bool]:
        """Stores host-pool pages: True for each page kvtier now holds."""
        n = len(keys)
        client = self.link.get()
        if client is None or self.pool is None or n == 0:
            return [False] * n
        pages = self._pages(host_indices, n)
        kkeys = self._keys(keys)
        held = ("stored", "present")
        try:
            if self.in_place:
                return [s in held for s in client.save(self.pool, kkeys, pages).status]
            out: list[bool] = []
            with self._staging_lock:
                for lo in range(0, n, self.staging_pages):
                    chunk = pages[lo : lo + self.staging_pages]
                    for slot, page in enumerate(chunk):
                        self._stage[slot] = self._host[:, :, page]  # type: ignore[index]
                    status = client.save(self.pool, kkeys[lo : lo + len(chunk)], list(range(len(chunk)))).status
                    out.extend(s in held for s in status)
            return out
        except KvtierError as e:
            log.warning("kvtier: save failed: %s", e)
            return [False] * n

    # The legacy per-value calls: SGLang uses them only without interface_v1, which __init__ refuses.
    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> Any:
        raise NotImplementedError("kvtier serves SGLang's page interface (interface_v1) only")

    def batch_get(self, keys: list[str], target_locations: Any = None, target_sizes: Any = None) -> Any:
        raise NotImplementedError("kvtier serves SGLang's page interface (interface_v1) only")

    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        raise NotImplementedError("kvtier serves SGLang's page interface (interface_v1) only")

    def batch_set(self, keys: list[str], values: Any = None, target_locations: Any = None, target_sizes: Any = None) -> bool:
        raise NotImplementedError("kvtier serves SGLang's page interface (interface_v1) only")

    def close(self) -> None:
        self.link.close()
