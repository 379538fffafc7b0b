"""kvtier's Python client for the engine channel of ``kvtier serve`` (docs/engine-channel.md)."""

from .client import EngineClient
from .errors import KvtierError
from .keys import chain_keys, namespace_root, rank_namespace
from .layout import kv_layout, layout_block_bytes, layout_extent, layout_tensors
from .pools import CudaPool, HostPool, Pool
from .results import LoadResult, LookupResult, SaveResult

__version__ = "0.1.0"

__all__ = [
    "EngineClient",
    "HostPool",
    "CudaPool",
    "Pool",
    "KvtierError",
    "chain_keys",
    "namespace_root",
    "rank_namespace",
    "kv_layout",
    "layout_block_bytes",
    "layout_extent",
    "layout_tensors",
    "LookupResult",
    "SaveResult",
    "LoadResult",
]
