"""kv_layout against docs/layouts.md's arithmetic and Node's describeKvLayout."""

from __future__ import annotations

import numpy as np
import pytest
from node_ref import node_eval

from kvtier import KvtierError, kv_layout, layout_block_bytes, layout_extent, layout_tensors
from kvtier.pools import HostPool

SIZES = {"num_layers": 3, "num_blocks": 5, "block_tokens": 4, "kv_heads": 2, "head_dim": 8}
FORMS = ["kv-first", "block-first", "separate", "stacked"]


@pytest.mark.parametrize("dtype,item", [("bf16", 2), ("fp16", 2), ("fp8", 1), ("fp32", 4)])
def test_block_bytes_is_the_packing_arithmetic(dtype: str, item: int) -> None:
    layout = kv_layout(**SIZES, dtype=dtype)
    assert layout_block_bytes(layout) == 2 * 3 * 4 * 2 * 8 * item
    # Contiguous tensors back to back: the pool is exactly numBlocks blocks.
    assert layout["extent"] == 5 * layout_block_bytes(layout)


def test_node_describe_kv_layout_agrees() -> None:
    layouts = [kv_layout(form, **SIZES) for form in FORMS]
    layouts.append(kv_layout("stacked", **SIZES, order=["block", "layer", "kv", "token", "head", "dim"]))
    described = node_eval(
        "output = input.map((l) => { const d = kvtier.describeKvLayout(l);"
        " return { blockBytes: d.blockBytes, extent: d.extent }; });",
        layouts,
    )
    for layout, node in zip(layouts, described):
        assert node == {"blockBytes": layout_block_bytes(layout), "extent": layout["extent"]}, layout["form"]


def test_extent_follows_strides() -> None:
    layout = kv_layout("block-first", **SIZES)
    padded = dict(layout, layers=[{"offset": i * 10_000, "strides": [640, 320, 32, 16, 1]} for i in range(3)])
    assert layout_extent(padded) == 20_000 + (1 + 4 * 640 + 320 + 3 * 32 + 16 + 7) * 2


def test_tensors_are_views_of_the_pool() -> None:
    pool = HostPool(kv_layout("separate", **SIZES), "views")
    try:
        views = pool.tensors()
        assert [v.shape for v in views] == [t.shape for t in layout_tensors(pool.layout)] == [(5, 4, 2, 8)] * 6
        views[5][4, 3, 1, 7] = 0xBEEF  # the last element of layer 2's V
        assert pool.array[-2:].view(np.uint16)[0] == 0xBEEF
    finally:
        pool.close()


def test_bad_layouts_are_refused() -> None:
    with pytest.raises(KvtierError) as e:
        kv_layout("nope", **SIZES)
    assert e.value.code == "KVTIER_BAD_ARGUMENT"
    with pytest.raises(KvtierError):
        kv_layout(**{**SIZES, "num_blocks": 0})
    with pytest.raises(KvtierError):
        kv_layout(**SIZES, dtype="int4")
