"""KV layout specs in ``describeKvLayout``'s form (docs/layouts.md), built and measured in Python."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import BAD_ARGUMENT, KvtierError

__all__ = [
    "DTYPE_BYTES",
    "FORMS",
    "TensorSpec",
    "kv_layout",
    "layout_tensors",
    "layout_block_bytes",
    "layout_extent",
    "with_tensor_refs",
]

DTYPE_BYTES: dict[str, int] = {"fp16": 2, "bf16": 2, "fp8": 1, "fp32": 4}
FORMS = ("separate", "kv-first", "block-first", "stacked")
_DIMS = ("layer", "kv", "block", "token", "head", "dim")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a layout: its name, byte offset, logical shape and element strides."""

    name: str
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _bad(message: str) -> KvtierError:
    return KvtierError(BAD_ARGUMENT, f"KV layout: {message}")


def _positive(spec: dict[str, Any], field: str) -> int:
    value = spec.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(f"{field} must be a positive integer, got {value!r}")
    return value


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides: list[int] = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _dtype_bytes(spec: dict[str, Any]) -> int:
    dtype = spec.get("dtype")
    if dtype not in DTYPE_BYTES:
        raise _bad(f"unknown dtype {dtype!r}")
    return DTYPE_BYTES[dtype]


def layout_block_bytes(spec: dict[str, Any]) -> int:
    """Bytes of one packed kvtier block: 2 x layers x blockTokens x kvHeads x headDim x dtype."""
    return (
        2
        * _positive(spec, "numLayers")
        * _positive(spec, "blockTokens")
        * _positive(spec, "kvHeads")
        * _positive(spec, "headDim")
        * _dtype_bytes(spec)
    )


def _tensor(name: str, ref: Any, shape: tuple[int, ...]) -> TensorSpec:
    if not isinstance(ref, dict) or not isinstance(ref.get("offset"), int):
        raise _bad(f"{name} needs an integer offset")
    strides = ref.get("strides")
    if strides is None:
        strides = _contiguous(shape)
    elif len(strides) != len(shape):
        raise _bad(f"{name}.strides must list {len(shape)} strides")
    return TensorSpec(name, int(ref["offset"]), shape, tuple(int(s) for s in strides))


def layout_tensors(spec: dict[str, Any]) -> list[TensorSpec]:
    """The layout's tensors in the order of its form (layer by layer; K before V; one if stacked)."""
    layers, blocks = _positive(spec, "numLayers"), _positive(spec, "numBlocks")
    tokens, heads, dim = (_positive(spec, f) for f in ("blockTokens", "kvHeads", "headDim"))
    form = spec.get("form")
    if form == "stacked":
        order = tuple(spec.get("order") or _DIMS)
        if sorted(order) != sorted(_DIMS):
            raise _bad(f"stacked order must name each of {', '.join(_DIMS)} once")
        sizes = {"layer": layers, "kv": 2, "block": blocks, "token": tokens, "head": heads, "dim": dim}
        return [_tensor("tensor", spec.get("tensor"), tuple(sizes[d] for d in order))]
    refs = spec.get("layers")
    if not isinstance(refs, list) or len(refs) != layers:
        raise _bad(f"layers must list {layers} entries")
    page = (tokens, heads, dim)
    if form == "separate":
        out: list[TensorSpec] = []
        for i, ref in enumerate(refs):
            pair = ref if isinstance(ref, dict) else {}
            out.append(_tensor(f"layers[{i}].k", pair.get("k"), (blocks, *page)))
            out.append(_tensor(f"layers[{i}].v", pair.get("v"), (blocks, *page)))
        return out
    if form == "kv-first":
        return [_tensor(f"layers[{i}]", r, (2, blocks, *page)) for i, r in enumerate(refs)]
    if form == "block-first":
        return [_tensor(f"layers[{i}]", r, (blocks, 2, *page)) for i, r in enumerate(refs)]
    raise _bad(f"unknown form {form!r}")


def layout_extent(spec: dict[str, Any]) -> int:
    """One past the highest byte any tensor touches: a host pool must be at least this big."""
    item = _dtype_bytes(spec)
    end = 0
    for t in layout_tensors(spec):
        span = 1 + sum(s * (n - 1) for s, n in zip(t.strides, t.shape))
        end = max(end, t.offset + span * item)
    return end


def kv_layout(
    form: str = "kv-first",
    *,
    num_layers: int,
    num_blocks: int,
    block_tokens: int,
    kv_heads: int,
    head_dim: int,
    dtype: str = "bf16",
    order: list[str] | None = None,
) -> dict[str, Any]:
    """A spec for a contiguous host pool: the form's tensors laid back to back from offset 0.

    The dict is what ``register`` sends, plus ``extent`` (the bytes the pool needs).
    """
    spec: dict[str, Any] = {
        "form": form,
        "numLayers": num_layers,
        "numBlocks": num_blocks,
        "blockTokens": block_tokens,
        "kvHeads": kv_heads,
        "headDim": head_dim,
        "dtype": dtype,
    }
    item = _dtype_bytes(spec)
    tensor_bytes = num_blocks * block_tokens * kv_heads * head_dim * item
    if form == "separate":
        spec["layers"] = [
            {"k": {"offset": (2 * i) * tensor_bytes}, "v": {"offset": (2 * i + 1) * tensor_bytes}}
            for i in range(num_layers)
        ]
    elif form in ("kv-first", "block-first"):
        spec["layers"] = [{"offset": i * 2 * tensor_bytes} for i in range(num_layers)]
    elif form == "stacked":
        spec["tensor"] = {"offset": 0}
        if order is not None:
            spec["order"] = list(order)
    else:
        raise _bad(f"unknown form {form!r}; one of {', '.join(FORMS)}")
    spec["extent"] = layout_extent(spec)
    return spec


def with_tensor_refs(spec: dict[str, Any], refs: list[dict[str, Any]]) -> dict[str, Any]:
    """A copy of ``spec`` whose tensors (in ``layout_tensors`` order) are ``refs``, without extent."""
    out = {k: v for k, v in spec.items() if k not in ("layers", "tensor", "extent")}
    count = len(layout_tensors(spec))
    if len(refs) != count:
        raise _bad(f"{len(refs)} tensor references for a layout of {count} tensors")
    if spec["form"] == "stacked":
        out["tensor"] = refs[0]
    elif spec["form"] == "separate":
        out["layers"] = [{"k": refs[2 * i], "v": refs[2 * i + 1]} for i in range(len(refs) // 2)]
    else:
        out["layers"] = list(refs)
    return out
