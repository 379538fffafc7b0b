"""kvtier as vLLM's KV connector (the V1 interface), selected without patching vLLM:

    vllm serve MODEL --kv-transfer-config '{"kv_connector": "KvtierConnector",
        "kv_connector_module_path": "kvtier.vllm", "kv_role": "kv_both",
        "kv_connector_extra_config": {"socket": "/run/kvtier.sock"}}'

``kv_connector_extra_config`` keys: ``socket`` (the sidecar's engine socket, default
``/run/kvtier.sock``), ``namespace`` (added to the key namespace, default none), ``load_async``
(load between scheduler steps, default true), ``timeout`` (seconds a call may wait, default 30),
``retry_s`` (seconds between reconnection attempts while the sidecar is down, default 1),
``kv_form`` (``kv-first`` or ``block-first``, default from the caches' shape), ``tp_rank`` (only
where vLLM's parallel state is absent: tests).

Keys are chained over the request's token ids with vLLM's block size, in a namespace of the model,
the cache dtype and the tensor-parallel rank, so ranks and models never share blocks. Only full
blocks of real tokens are stored. See docs/engines.md.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from ._link import Link
from ._vllm_base import (
    HAVE_VLLM,
    BlockTransfer,
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KvtierConnectorMetadata,
    is_role,
)
from ._vllm_scheduler import SchedulerSide
from ._vllm_worker import WorkerSide, describe_kv_caches
from .keys import rank_namespace

__all__ = [
    "KvtierConnector",
    "KvtierConnectorMetadata",
    "BlockTransfer",
    "KVConnectorRole",
    "KVConnectorMetadata",
    "HAVE_VLLM",
    "describe_kv_caches",
]

log = logging.getLogger("kvtier")
DEFAULT_SOCKET = "/run/kvtier.sock"


def _extra(vllm_config: Any) -> dict[str, Any]:
    config = getattr(vllm_config, "kv_transfer_config", None)
    extra = getattr(config, "kv_connector_extra_config", None) or {}
    return dict(extra)


def _tp(vllm_config: Any, extra: dict[str, Any]) -> tuple[int, int]:
    parallel = getattr(vllm_config, "parallel_config", None)
    world = int(getattr(parallel, "tensor_parallel_size", 1) or 1)
    if "tp_rank" in extra:
        return int(extra["tp_rank"]), world
    try:  # pragma: no cover - needs vLLM
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        return int(get_tensor_model_parallel_rank()), world
    except Exception:  # noqa: BLE001 - no vLLM, or its groups not initialised (scheduler process)
        return int(getattr(parallel, "rank", 0) or 0) % world, world


def _namespace(vllm_config: Any, extra: dict[str, Any]) -> str:
    model = getattr(getattr(vllm_config, "model_config", None), "model", "") or ""
    cache_dtype = getattr(getattr(vllm_config, "cache_config", None), "cache_dtype", "auto")
    ns = f"vllm/{model}/{cache_dtype}"
    return f"{ns}/{extra['namespace']}" if extra.get("namespace") else ns


class KvtierConnector(KVConnectorBase_V1):  # type: ignore[misc,valid-type]
    """vLLM's KV connector V1 over a kvtier sidecar: one class, a scheduler or a worker by role."""

    def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Any = None) -> None:
        params = inspect.signature(KVConnectorBase_V1.__init__).parameters
        if "kv_cache_config" in params:
            super().__init__(vllm_config, role, kv_cache_config)
        else:  # pragma: no cover - vLLM before kv_cache_config joined the constructor
            super().__init__(vllm_config, role)
        extra = _extra(vllm_config)
        self.block_tokens = int(vllm_config.cache_config.block_size)
        rank, world = _tp(vllm_config, extra)
        namespace = _namespace(vllm_config, extra)
        self.namespaces = [rank_namespace(namespace, r, world) for r in range(world)]
        self.rank = rank
        self.kv_form = extra.get("kv_form")
        timeout = float(extra.get("timeout", 30.0))
        is_scheduler = is_role(role, "SCHEDULER")
        link = Link(
            str(extra.get("socket", DEFAULT_SOCKET)),
            f"vllm-{'scheduler' if is_scheduler else f'worker-tp{rank}'}",
            timeout=timeout,
            retry_s=float(extra.get("retry_s", 1.0)),
        )
        self.scheduler: SchedulerSide | None = None
        self.worker: WorkerSide | None = None
        if is_scheduler:
            self.scheduler = SchedulerSide(link, self.block_tokens, self.namespaces, bool(extra.get("load_async", True)))
        else:
            self.worker = WorkerSide(link, rank, timeout)

    # --- worker side ------------------------------------------------------------------------

    def _worker(self) -> WorkerSide:
        assert self.worker is not None, "a worker-side call on the scheduler's connector"
        return self.worker

    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        self._worker().register_kv_caches(kv_caches, self.block_tokens, self.kv_form)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if isinstance(meta, KvtierConnectorMetadata):
            self._worker().start_load_kv(meta)

    def wait_for_layer_load(self, layer_name: str) -> None:
        self._worker().wait_for_loads()

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> None:
        # A kvtier block spans all layers: the save waits for the last layer (wait_for_save).
        return

    def wait_for_save(self) -> None:
        meta = self._get_connector_metadata()
        if isinstance(meta, KvtierConnectorMetadata):
            self._worker().save(meta)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        return self._worker().get_finished(finished_req_ids)

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._worker().take_load_errors()

    def shutdown(self) -> None:
        side = self.worker or self.scheduler
        if side is not None:
            side.link.close()

    # --- scheduler side ---------------------------------------------------------------------

    def _scheduler(self) -> SchedulerSide:
        assert self.scheduler is not None, "a scheduler-side call on a worker's connector"
        return self.scheduler

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int | None, bool]:
        return self._scheduler().get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        self._scheduler().update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        return self._scheduler().build_connector_meta(scheduler_output)

    def update_connector_output(self, connector_output: Any) -> None:
        self._scheduler().update_connector_output(connector_output)

    def request_finished(self, request: Any, block_ids: Any) -> tuple[bool, dict[str, Any] | None]:
        return self._scheduler().request_finished(request, block_ids)

    @classmethod
    def get_required_kvcache_layout(cls, vllm_config: Any) -> str | None:
        return None  # any layout: strides say where each element is
