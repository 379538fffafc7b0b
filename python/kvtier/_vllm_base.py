"""vLLM's KV connector V1 base classes when vLLM is installed, else local ones of the same shape,
and the metadata the scheduler side hands the workers each step.

The local base mirrors ``vllm/distributed/kv_transfer/kv_connector/v1/base.py`` (as read at vLLM
commit 003df2961dd8): the same method names and the same metadata binding, so the connector runs
the same code with or without vLLM (tests drive it with stand-ins of vLLM's objects).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

try:  # pragma: no cover - vLLM does not install on the machines these tests run on
    from vllm.distributed.kv_transfer.kv_connector.v1.base import (
        KVConnectorBase_V1,
        KVConnectorMetadata,
        KVConnectorRole,
    )

    HAVE_VLLM = True
except ImportError:
    HAVE_VLLM = False

    class KVConnectorRole(enum.Enum):  # type: ignore[no-redef]
        SCHEDULER = 0
        WORKER = 1

    class KVConnectorMetadata:  # type: ignore[no-redef]
        """Scheduler-side connector -> worker-side connector, once per step."""

    class KVConnectorBase_V1:  # type: ignore[no-redef]
        """The V1 connector interface: scheduler-side and worker-side methods on one class."""

        def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Any = None) -> None:
            self._connector_metadata: KVConnectorMetadata | None = None
            self._vllm_config = vllm_config
            self._kv_transfer_config = getattr(vllm_config, "kv_transfer_config", None)
            if self._kv_transfer_config is None:
                raise ValueError("kv_transfer_config must be set for KVConnectorBase_V1")
            self._kv_cache_config = kv_cache_config
            self._role = role

        @property
        def role(self) -> Any:
            return self._role

        def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
            self._connector_metadata = connector_metadata

        def clear_connector_metadata(self) -> None:
            self._connector_metadata = None

        def _get_connector_metadata(self) -> KVConnectorMetadata:
            assert self._connector_metadata is not None
            return self._connector_metadata

        def has_connector_metadata(self) -> bool:
            return self._connector_metadata is not None

        def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
            return

        def handle_preemptions(self, kv_connector_metadata: KVConnectorMetadata) -> None:
            return

        def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
            return None, None

        def get_block_ids_with_load_errors(self) -> set[int]:
            return set()

        def shutdown(self) -> None:
            return None

        def update_connector_output(self, connector_output: Any) -> None:
            return

        def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
            return False, None

        def take_events(self) -> Any:
            return ()


@dataclass
class BlockTransfer:
    """Blocks of one request to move: engine block ids, and per TP rank the kvtier keys."""

    req_id: str
    block_ids: list[int]
    keys: list[list[bytes]]  # keys[rank][i] is block_ids[i]'s key on that rank
    first_block: int  # index of block_ids[0] in the request's block table

    def keys_for(self, rank: int) -> list[bytes]:
        return self.keys[rank]


@dataclass
class KvtierConnectorMetadata(KVConnectorMetadata):  # type: ignore[misc]
    """What the workers do this step: loads (async ones finish in a later step), then saves."""

    loads: dict[str, BlockTransfer] = field(default_factory=dict)
    async_loads: set[str] = field(default_factory=set)
    saves: list[BlockTransfer] = field(default_factory=list)
    preempted: set[str] = field(default_factory=set)


def is_role(role: Any, name: str) -> bool:
    """Roles compare by name: vLLM's enum in vLLM, the local one (or a stand-in) in tests."""
    return getattr(role, "name", str(role)) == name
