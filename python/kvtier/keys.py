"""Chained block keys, byte-identical to Node's ``chainKeys`` (docs/keys.md)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from .errors import BAD_ARGUMENT, KvtierError

__all__ = ["KEY_BYTES", "namespace_root", "chain_keys", "rank_namespace"]

KEY_BYTES = 32
_ROOT_PREFIX = b"kvtier-key-v1\x00"
_UINT32_MAX = 0xFFFFFFFF


def namespace_root(namespace: str = "") -> bytes:
    """The hash every chain of ``namespace`` starts from."""
    return hashlib.sha256(_ROOT_PREFIX + namespace.encode("utf-8")).digest()


def chain_keys(
    tokens: Sequence[int],
    block_tokens: int,
    namespace: str = "",
    parent: bytes | None = None,
) -> list[bytes]:
    """One 32-byte key per full block of ``tokens``; a trailing partial block gets none.

    ``parent`` continues a chain from a known key (the block before ``tokens[0]``) instead of the
    namespace root.
    """
    if isinstance(block_tokens, bool) or not isinstance(block_tokens, int) or block_tokens < 1:
        raise KvtierError(BAD_ARGUMENT, f"block_tokens must be a positive integer, got {block_tokens!r}")
    if parent is None:
        prev = namespace_root(namespace)
    else:
        prev = bytes(parent)
        if len(prev) != KEY_BYTES:
            raise KvtierError(BAD_ARGUMENT, "a parent key for chain_keys must be 32 bytes")
    full = len(tokens) // block_tokens * block_tokens
    ids = [int(t) for t in tokens[:full]]
    for i, t in enumerate(ids):
        if t < 0 or t > _UINT32_MAX:
            raise KvtierError(BAD_ARGUMENT, f"token {i} is not a uint32: {t}")
    packed = struct.pack(f"<{full}I", *ids)
    step = block_tokens * 4
    keys: list[bytes] = []
    for start in range(0, len(packed), step):
        prev = hashlib.sha256(prev + packed[start : start + step]).digest()
        keys.append(prev)
    return keys


def rank_namespace(namespace: str, rank: int, world: int) -> str:
    """The namespace of one tensor-parallel rank: ranks hold different shards, so never share keys."""
    if not (isinstance(rank, int) and isinstance(world, int)) or world < 1 or not 0 <= rank < world:
        raise KvtierError(BAD_ARGUMENT, f"rank {rank!r} of world {world!r} is not 0 <= rank < world")
    return f"{namespace}/tp{rank}of{world}"
