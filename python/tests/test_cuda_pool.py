"""What register_cuda_pool sends, from stand-ins shaped like torch CUDA tensors (no GPU here:
the real path is unverified until it runs on one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from kvtier import KvtierError, kv_layout
from kvtier.pools import CudaPool, ipc_mem_handle

RAW = bytes(range(64))


@dataclass
class Device:
    index: int


class Storage:
    def __init__(self, handle: bytes, size: int, offset: int) -> None:
        self.shared = (0, handle, size, offset, b"ref", 0, b"event", False)

    def _share_cuda_(self) -> tuple[Any, ...]:
        return self.shared


class FakeTensor:
    """The attributes of torch.Tensor that CudaPool reads."""

    is_cuda = True
    dtype = "torch.bfloat16"

    def __init__(self, shape: tuple[int, ...], storage: Storage, storage_offset: int = 0, device: int = 1) -> None:
        self.shape = shape
        self.device = Device(device)
        self._storage = storage
        self._offset = storage_offset

    def untyped_storage(self) -> Storage:
        return self._storage

    def storage_offset(self) -> int:
        return self._offset

    def element_size(self) -> int:
        return 2

    def stride(self) -> tuple[int, ...]:
        strides, step = [], 1
        for size in reversed(self.shape):
            strides.append(step)
            step *= size
        return tuple(reversed(strides))


def test_ipc_handles_old_and_versioned() -> None:
    assert ipc_mem_handle(RAW) == RAW
    assert ipc_mem_handle(b"\x02c" + RAW) == RAW  # version 2, 'c': a cudaMalloc block
    with pytest.raises(KvtierError) as e:
        ipc_mem_handle(b"\x02e" + RAW + b"more")  # expandable segment
    assert e.value.code == "KVTIER_BAD_ARGUMENT"


def test_register_request_names_each_tensor_by_handle_and_offset() -> None:
    layout = kv_layout("kv-first", num_layers=2, num_blocks=4, block_tokens=2, kv_heads=1, head_dim=4)
    shape = (2, 4, 2, 1, 4)
    tensors = [
        FakeTensor(shape, Storage(b"\x02c" + RAW, 256, 0)),
        # A view 8 elements into a storage that starts 1024 bytes into its allocation.
        FakeTensor(shape, Storage(b"\x02c" + bytes(64), 272, 1024), storage_offset=8),
    ]
    pool = CudaPool(tensors, layout, name="gpu")  # type: ignore[arg-type]
    assert pool.memory() == {
        "kind": "cuda-ipc",
        "device": 1,
        "handles": [RAW.hex(), bytes(64).hex()],
        "bytes": [256, 1024 + 272],
    }
    wire = pool.wire_layout()
    assert "extent" not in wire
    assert wire["layers"] == [
        {"offset": 0, "strides": [32, 8, 4, 4, 1]},
        {"offset": 1024 + 16, "strides": [32, 8, 4, 4, 1]},
    ]


def test_tensors_that_do_not_fit_the_layout_are_refused() -> None:
    layout = kv_layout("kv-first", num_layers=2, num_blocks=4, block_tokens=2, kv_heads=1, head_dim=4)
    one = FakeTensor((2, 4, 2, 1, 4), Storage(RAW, 256, 0))
    for tensors in ([one], [one, FakeTensor((2, 3, 2, 1, 4), Storage(RAW, 256, 0))],
                    [one, FakeTensor((2, 4, 2, 1, 4), Storage(RAW, 256, 0), device=0)]):
        with pytest.raises(KvtierError) as e:
            CudaPool(tensors, layout)  # type: ignore[arg-type]
        assert e.value.code == "KVTIER_BAD_ARGUMENT"
