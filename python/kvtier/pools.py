"""Engine KV pools the server reads and writes in place: host memory by memfd, GPU by CUDA IPC."""

from __future__ import annotations

import mmap
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BAD_ARGUMENT, KvtierError
from .layout import DTYPE_BYTES, layout_extent, layout_tensors, with_tensor_refs

if TYPE_CHECKING:  # torch is optional: imported only when the caller hands torch tensors
    import torch

__all__ = ["Pool", "HostPool", "CudaPool", "ipc_mem_handle", "tensor_views"]

_NUMPY_DTYPES: dict[str, Any] = {
    "fp16": np.float16,
    "bf16": np.uint16,  # numpy has no bfloat16: the bits, as torch_tensors() reinterprets them
    "fp8": np.uint8,
    "fp32": np.float32,
}
_IPC_HANDLE_BYTES = 64
_SHAREABLE_CUDA_MALLOC = ord("c")


def tensor_views(buffer: np.ndarray, layout: dict[str, Any]) -> list[np.ndarray]:
    """Views of a uint8 buffer as the layout's tensors, each of its form's shape and dtype."""
    dtype = np.dtype(_NUMPY_DTYPES[layout["dtype"]])
    return [
        np.ndarray(
            t.shape,
            dtype=dtype,
            buffer=buffer,
            offset=t.offset,
            strides=tuple(s * dtype.itemsize for s in t.strides),
        )
        for t in layout_tensors(layout)
    ]


class Pool:
    """A registered pool: the server addresses its blocks by id in ``[0, num_blocks)``."""

    def __init__(self, name: str, layout: dict[str, Any]) -> None:
        self.name = name
        self.layout = layout
        self.num_blocks: int = int(layout["numBlocks"])
        self.block_bytes = 0  # set from the server's answer to register
        self.registered = False

    def memory(self) -> dict[str, Any]:
        """The ``memory`` field of the register request."""
        raise NotImplementedError

    def wire_layout(self) -> dict[str, Any]:
        """The ``layout`` field of the register request."""
        raise NotImplementedError


class HostPool(Pool):
    """Host memory in a memfd, mapped here and (through /proc/<pid>/fd) by the server."""

    def __init__(self, layout: dict[str, Any], name: str = "kv") -> None:
        super().__init__(name, layout)
        self.bytes = int(layout.get("extent") or layout_extent(layout))
        self._fd = os.memfd_create(f"kvtier-{name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, self.bytes)
            self._map: mmap.mmap | None = mmap.mmap(self._fd, self.bytes, mmap.MAP_SHARED)
        except BaseException:
            os.close(self._fd)
            raise
        self.array: np.ndarray = np.frombuffer(self._map, dtype=np.uint8)

    @property
    def fd(self) -> int:
        return self._fd

    def memory(self) -> dict[str, Any]:
        return {"kind": "memfd", "fd": self._fd, "bytes": self.bytes}

    def wire_layout(self) -> dict[str, Any]:
        return {k: v for k, v in self.layout.items() if k != "extent"}

    def tensors(self) -> list[np.ndarray]:
        """Per tensor of the layout, a numpy view of the form's shape (bf16 as uint16 bits)."""
        return tensor_views(self.array, self.layout)

    def torch_tensors(self) -> list["torch.Tensor"]:
        """The same views as torch tensors of the layout's dtype (needs torch)."""
        import torch

        target = {
            "fp16": torch.float16,
            "bf16": torch.bfloat16,
            "fp8": torch.float8_e4m3fn,
            "fp32": torch.float32,
        }[self.layout["dtype"]]
        # Signed views: torch.from_numpy takes int16/int8 everywhere, uint16 only in recent versions.
        signed = {2: np.int16, 1: np.int8, 4: np.float32}[DTYPE_BYTES[self.layout["dtype"]]]
        out = []
        for view in self.tensors():
            t = torch.from_numpy(view.view(signed) if view.dtype.kind == "u" else view)
            out.append(t.view(target) if t.dtype != target else t)
        return out

    def close(self) -> None:
        """Frees the memory here (after release; the arrays must no longer be used)."""
        if self._map is not None:
            self.array = np.empty(0, dtype=np.uint8)
            try:
                self._map.close()
            except BufferError:
                pass  # views still exported: the mapping goes when the last one does
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def ipc_mem_handle(handle: bytes) -> bytes:
    """The 64-byte cudaIpcMemHandle inside what ``UntypedStorage._share_cuda_()`` returns.

    Older PyTorch returns the raw handle; newer versions prefix a version byte and a type byte
    ('c' for a cudaMalloc block). Expandable segments ('e') cannot be shared by IPC handle.
    """
    raw = bytes(handle)
    if len(raw) == _IPC_HANDLE_BYTES:
        return raw
    if len(raw) == _IPC_HANDLE_BYTES + 2 and raw[1] == _SHAREABLE_CUDA_MALLOC:
        return raw[2:]
    raise KvtierError(
        BAD_ARGUMENT,
        "this CUDA tensor's storage is not shareable by cudaIpcMemHandle "
        f"({len(raw)}-byte handle); expandable_segments must be off in PYTORCH_CUDA_ALLOC_CONF",
    )


class CudaPool(Pool):
    """GPU tensors shared with the server by CUDA IPC handle, one handle per tensor.

    The tensors are kept referenced here: freeing them while registered would let the caching
    allocator hand their memory to something else under the server's feet.
    """

    def __init__(self, tensors: list["torch.Tensor"], layout: dict[str, Any], name: str = "kv") -> None:
        super().__init__(name, layout)
        specs = layout_tensors(layout)
        if len(tensors) != len(specs):
            raise KvtierError(BAD_ARGUMENT, f"{len(tensors)} tensors for a layout of {len(specs)}")
        self.tensors = list(tensors)
        devices = {t.device.index for t in self.tensors}
        if any(not t.is_cuda for t in self.tensors) or len(devices) != 1:
            raise KvtierError(BAD_ARGUMENT, "a CUDA pool's tensors must all be on one CUDA device")
        self.device = int(devices.pop() or 0)
        handles: list[str] = []
        sizes: list[int] = []
        refs: list[dict[str, Any]] = []
        for t, spec in zip(self.tensors, specs):
            if tuple(t.shape) != spec.shape:
                raise KvtierError(BAD_ARGUMENT, f"{spec.name}: tensor shape {tuple(t.shape)}, layout {spec.shape}")
            if t.element_size() != DTYPE_BYTES[layout["dtype"]]:
                raise KvtierError(BAD_ARGUMENT, f"{spec.name}: {t.dtype} is not {layout['dtype']}")
            # (device, handle, storage bytes, storage offset in the handle's allocation, ...)
            shared = t.untyped_storage()._share_cuda_()
            handle, storage_bytes, storage_offset = shared[1], int(shared[2]), int(shared[3])
            handles.append(ipc_mem_handle(handle).hex())
            sizes.append(storage_offset + storage_bytes)
            refs.append(
                {"offset": storage_offset + t.storage_offset() * t.element_size(), "strides": list(t.stride())}
            )
        self._memory = {"kind": "cuda-ipc", "device": self.device, "handles": handles, "bytes": sizes}
        self._layout = with_tensor_refs(layout, refs)

    def memory(self) -> dict[str, Any]:
        return self._memory

    def wire_layout(self) -> dict[str, Any]:
        return self._layout
