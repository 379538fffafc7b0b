"""Engine memory the adapters register as it lies: CPU arrays found in a shared file mapping
(registered in place by file descriptor), CUDA tensors (by IPC handle), and byte-level views.

vLLM and SGLang allocate their KV memory themselves; the adapters cannot hand them a memfd to use.
What they can do is find out whether the memory an engine handed them already lies in a shared
mapping of a file this process holds open (a memfd, /dev/shm), by reading /proc/self/maps, and
then name that file's descriptor to the server: the server maps the same pages, so loads and saves
touch the engine's memory in place.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BAD_ARGUMENT, KvtierError
from .pools import Pool

__all__ = ["TensorInfo", "tensor_info", "find_shared_file", "FilePool", "register_pool", "byte_view"]

_TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float8_e4m3fn": "fp8"}
_NUMPY_DTYPES = {"float16": "fp16", "float32": "fp32", "uint16": "bf16", "int16": "bf16", "uint8": "fp8", "int8": "fp8"}


@dataclass(frozen=True)
class TensorInfo:
    """What the adapters need to know of a tensor or array: where, what shape, what strides."""

    address: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # elements
    itemsize: int
    dtype: str | None  # kvtier's dtype name, None when the element type has no kvtier name
    cuda: bool
    obj: Any

    @property
    def span(self) -> int:
        """Bytes from the first element to one past the last."""
        if any(n == 0 for n in self.shape):
            return 0
        return (1 + sum((n - 1) * s for n, s in zip(self.shape, self.strides))) * self.itemsize


def tensor_info(t: Any) -> TensorInfo:
    """A torch tensor (CPU or CUDA) or a numpy array, described."""
    if isinstance(t, np.ndarray):
        item = t.dtype.itemsize
        if any(s % item for s in t.strides):
            raise KvtierError(BAD_ARGUMENT, "an array whose strides are not whole elements")
        return TensorInfo(
            int(t.__array_interface__["data"][0]),
            tuple(int(n) for n in t.shape),
            tuple(int(s) // item for s in t.strides),
            item,
            _NUMPY_DTYPES.get(t.dtype.name),
            False,
            t,
        )
    if hasattr(t, "data_ptr") and hasattr(t, "stride"):
        name = str(t.dtype).rsplit(".", 1)[-1]
        return TensorInfo(
            int(t.data_ptr()),
            tuple(int(n) for n in t.shape),
            tuple(int(s) for s in t.stride()),
            int(t.element_size()),
            _TORCH_DTYPES.get(name),
            bool(getattr(t, "is_cuda", False)),
            t,
        )
    raise KvtierError(BAD_ARGUMENT, f"not a tensor or an array: {type(t).__name__}")


@dataclass(frozen=True)
class SharedFile:
    """A file this process holds open and maps shared, and where an address falls in it."""

    fd: int
    size: int
    map_start: int
    map_end: int
    file_offset: int  # the file offset that map_start shows

    def offset_of(self, address: int) -> int:
        return self.file_offset + (address - self.map_start)


def _mapping_of(address: int) -> tuple[int, int, int, str, int, str] | None:
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                perms, offset, dev, inode = parts[1], int(parts[2], 16), parts[3], int(parts[4])
                return lo, hi, offset, perms, inode, dev
    return None


def find_shared_file(address: int, length: int) -> SharedFile | None:
    """The open file whose shared mapping holds ``[address, address + length)``, if there is one.

    None for private or anonymous memory (torch's pinned or pageable allocations): the server
    cannot reach that memory by file descriptor.
    """
    found = _mapping_of(address)
    if found is None:
        return None
    lo, hi, offset, perms, inode, dev = found
    if "s" not in perms or inode == 0 or address + length > hi:
        return None
    major, minor = (int(x, 16) for x in dev.split(":"))
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if st.st_ino == inode and os.major(st.st_dev) == major and os.minor(st.st_dev) == minor:
            return SharedFile(int(name), int(st.st_size), lo, hi, offset)
    return None


class FilePool(Pool):
    """Memory the engine owns, in a shared file this process holds: registered as ``memfd``."""

    def __init__(self, shared: SharedFile, layout: dict[str, Any], name: str) -> None:
        super().__init__(name, layout)
        self.shared = shared

    def memory(self) -> dict[str, Any]:
        return {"kind": "memfd", "fd": self.shared.fd, "bytes": self.shared.size}

    def wire_layout(self) -> dict[str, Any]:
        return {k: v for k, v in self.layout.items() if k != "extent"}


def register_pool(client: Any, pool: Pool) -> Pool:
    """Registers a pool built here on the client's connection."""
    return client.register_pool(pool)


def byte_view(info: TensorInfo) -> np.ndarray:
    """A numpy view of a CPU tensor's elements (as unsigned integers of the same size), in its own
    shape and strides, sharing its memory. Byte copies need no dtype numpy may lack (bf16, fp8)."""
    if info.cuda:
        raise KvtierError(BAD_ARGUMENT, "a CUDA tensor has no host view")
    raw = np.ctypeslib.as_array((ctypes.c_uint8 * max(info.span, 1)).from_address(info.address))
    dtype = np.dtype({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[info.itemsize])
    return np.ndarray(info.shape, dtype=dtype, buffer=raw, strides=tuple(s * info.itemsize for s in info.strides))
