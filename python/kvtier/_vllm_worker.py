"""The worker side of KvtierConnector: the engine's paged KV registered in place, loads scattered
straight into it, saves gathered straight out of it.

A kvtier block holds every layer of an engine block, so a save can only start once the step's
forward pass wrote all layers: saves go out at ``wait_for_save`` and are waited for there (vLLM
may reuse a block as soon as the step ends). Loads go out at ``start_load_kv``; synchronous ones
are waited for at the first ``wait_for_layer_load``, asynchronous ones are polled by
``get_finished``. A load that fails (a block missing or corrupt, the sidecar gone, no answer in
time) reports its engine blocks through ``get_block_ids_with_load_errors`` so vLLM recomputes them.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait
from dataclasses import dataclass
from typing import Any

from ._link import Link
from ._memory import FilePool, find_shared_file, register_pool, tensor_info
from ._vllm_base import BlockTransfer, KvtierConnectorMetadata
from .client import EngineClient
from .errors import BAD_ARGUMENT, KvtierError
from .layout import layout_block_bytes
from .pools import CudaPool, Pool
from .results import LoadResult

log = logging.getLogger("kvtier")


@dataclass
class _Load:
    transfer: BlockTransfer
    future: Future[LoadResult] | None  # None: never sent (no sidecar, no pool)
    started: float


def describe_kv_caches(kv_caches: dict[str, Any], block_tokens: int, form: str | None = None) -> dict[str, Any]:
    """The layout spec of vLLM's per-layer caches, offsets as absolute addresses for now.

    FlashAttention gives each layer ``(2, num_blocks, block_size, kv_heads, head_size)`` (kv-first);
    FlashInfer and Triton give ``(num_blocks, 2, ...)`` (block-first). Physical orders such as HND
    show in the strides, which the layout carries as they are.
    """
    infos = [tensor_info(t) for t in kv_caches.values()]
    if not infos:
        raise KvtierError(BAD_ARGUMENT, "register_kv_caches got no KV cache")
    first = infos[0]
    if len(first.shape) != 5:
        raise KvtierError(BAD_ARGUMENT, f"a KV cache of shape {first.shape}: expected 5 dimensions")
    if form is None:
        form = "kv-first" if first.shape[0] == 2 else "block-first"
    num_blocks = first.shape[1] if form == "kv-first" else first.shape[0]
    _, _, tokens, heads, dim = first.shape
    if tokens != block_tokens:
        raise KvtierError(BAD_ARGUMENT, f"KV cache blocks of {tokens} tokens, vLLM's block size is {block_tokens}")
    for name, info in zip(kv_caches, infos):
        if info.shape != first.shape or info.dtype != first.dtype or info.cuda != first.cuda:
            raise KvtierError(BAD_ARGUMENT, f"layer {name}: KV caches of different shapes or dtypes")
    if first.dtype is None:
        raise KvtierError(BAD_ARGUMENT, "a KV cache dtype kvtier does not know (bf16, fp16, fp32, fp8)")
    return {
        "form": form,
        "numLayers": len(infos),
        "numBlocks": num_blocks,
        "blockTokens": tokens,
        "kvHeads": heads,
        "headDim": dim,
        "dtype": first.dtype,
        "layers": [{"offset": i.address, "strides": list(i.strides)} for i in infos],
    }


class WorkerSide:
    def __init__(self, link: Link, rank: int, load_timeout: float) -> None:
        self.link = link
        self.rank = rank
        self.load_timeout = load_timeout
        self.link.on_connect = self._register
        self._kv_caches: dict[str, Any] | None = None
        self._layout: dict[str, Any] | None = None
        self.pool: Pool | None = None
        self._loads: dict[str, _Load] = {}
        self._sync_loads: list[str] = []
        self._errors: set[int] = set()
        self.block_tokens = 0

    # --- registration -----------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, Any], block_tokens: int, form: str | None) -> None:
        self._kv_caches = dict(kv_caches)
        self._layout = describe_kv_caches(self._kv_caches, block_tokens, form)
        self.block_tokens = block_tokens
        self.link.get()  # registers now if the sidecar is up; otherwise on the first reconnect

    def _register(self, client: EngineClient) -> None:
        """Registers the caches on a fresh connection (the first one, or after the sidecar came back)."""
        if self._kv_caches is None or self._layout is None:
            return
        tensors = list(self._kv_caches.values())
        layout = self._layout
        if client.block_bytes != layout_block_bytes(layout):
            raise KvtierError(
                BAD_ARGUMENT,
                f"the sidecar stores {client.block_bytes}-byte blocks, this engine's are "
                f"{layout_block_bytes(layout)}: start kvtier serve with --block-bytes {layout_block_bytes(layout)}",
            )
        if tensor_info(tensors[0]).cuda:
            relative = {**layout, "layers": [{"offset": 0, "strides": r["strides"]} for r in layout["layers"]]}
            self.pool = client.register_cuda_pool(tensors, relative, name=f"vllm-tp{self.rank}")
            return
        infos = [tensor_info(t) for t in tensors]
        lo = min(i.address for i in infos)
        hi = max(i.address + i.span for i in infos)
        shared = find_shared_file(lo, hi - lo)
        if shared is None:
            raise KvtierError(
                BAD_ARGUMENT,
                "these CPU KV caches are not in a shared file mapping this process holds open; "
                "kvtier can reach host KV memory only by file descriptor (a memfd, /dev/shm)",
            )
        in_file = {**layout, "layers": [{"offset": shared.offset_of(i.address), "strides": list(i.strides)} for i in infos]}
        self.pool = register_pool(client, FilePool(shared, in_file, f"vllm-tp{self.rank}"))

    # --- loads ------------------------------------------------------------------------------

    def start_load_kv(self, meta: KvtierConnectorMetadata) -> None:
        if not meta.loads:
            return
        client = self.link.get()
        now = time.monotonic()
        for req_id, transfer in meta.loads.items():
            future = None
            if client is not None and self.pool is not None:
                try:
                    future = client.load_async(self.pool, transfer.keys_for(self.rank), transfer.block_ids)
                except KvtierError as e:
                    log.warning("kvtier: load for %s not sent: %s", req_id, e)
            self._loads[req_id] = _Load(transfer, future, now)
            if req_id not in meta.async_loads:
                self._sync_loads.append(req_id)

    def _settle(self, req_id: str, wait_s: float | None) -> bool:
        """Whether the load ended (recording its failed blocks); waits up to ``wait_s``."""
        load = self._loads[req_id]
        blocks = load.transfer.block_ids
        if load.future is None:
            self._errors.update(blocks)
            return True
        try:
            result = load.future.result(timeout=wait_s)
        except FutureTimeout:
            if time.monotonic() - load.started < self.load_timeout:
                return False
            log.warning("kvtier: load for %s got no answer in %s s; vLLM recomputes it", req_id, self.load_timeout)
            self._errors.update(blocks)
            return True
        except KvtierError as e:
            log.warning("kvtier: load for %s failed: %s; vLLM recomputes it", req_id, e)
            self._errors.update(blocks)
            return True
        self._errors.update(b for b, ok in zip(blocks, result.loaded) if not ok)
        return True

    def wait_for_loads(self) -> None:
        """Waits for this step's synchronous loads (all layers of a block come in one piece)."""
        pending, self._sync_loads = self._sync_loads, []
        for req_id in pending:
            if req_id in self._loads:
                while not self._settle(req_id, self.load_timeout):
                    pass
                del self._loads[req_id]

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        self.wait_for_loads()
        done: set[str] = set()
        for req_id in list(self._loads):
            if self._settle(req_id, 0):
                del self._loads[req_id]
                done.add(req_id)
        return None, (done or None)

    def take_load_errors(self) -> set[int]:
        errors, self._errors = self._errors, set()
        return errors

    # --- saves ------------------------------------------------------------------------------

    def save(self, meta: KvtierConnectorMetadata) -> None:
        """Saves the step's newly full blocks and waits: a dropped save is only a future miss."""
        if not meta.saves:
            return
        client = self.link.get()
        if client is None or self.pool is None:
            return
        if isinstance(self.pool, CudaPool):
            # The forward pass may still be running on the engine's stream. Interprocess CUDA events
            # (kvtier's stream waiting on the engine's event) are not implemented yet, so the host
            # waits for the stream here before the sidecar gathers.
            import torch

            torch.cuda.current_stream(self.pool.device).synchronize()
        futures = []
        for transfer in meta.saves:
            try:
                futures.append(client.save_async(self.pool, transfer.keys_for(self.rank), transfer.block_ids))
            except KvtierError as e:
                log.warning("kvtier: save for %s not sent: %s", transfer.req_id, e)
        _, late = wait(futures, timeout=self.link.timeout)
        if late:
            # The blocks may be reused once this returns: a sidecar this slow is treated as gone.
            log.warning("kvtier: %d saves got no answer; closing the connection", len(late))
            client.close()
        for f in futures:
            if f.done() and f.exception() is not None:
                log.warning("kvtier: save failed: %s", f.exception())

    def close(self) -> None:
        self.link.close()
