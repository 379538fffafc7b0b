"""The scheduler side of KvtierConnector: which prefix kvtier holds, what each step loads and saves.

Keys are computed here, once per block and rank, and travel to the workers in the step's metadata;
a worker uses only its own rank's keys (ranks hold different shards of the same tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ._link import Link
from ._vllm_base import BlockTransfer, KvtierConnectorMetadata
from .errors import KvtierError
from .keys import chain_keys

log = logging.getLogger("kvtier")


@dataclass
class _Request:
    request: Any
    block_ids: list[int] = field(default_factory=list)
    next_save: int = 0  # blocks below this are stored (or being loaded) already
    loading: list[int] | None = None  # engine blocks of a load not yet finished, in order
    loading_from: int = 0  # the block index of loading[0]


def _tokens(request: Any) -> Any:
    tokens = getattr(request, "all_token_ids", None)
    return tokens if tokens is not None else request.prompt_token_ids


def _first_group(block_ids: Any) -> list[int]:
    """vLLM hands block ids per KV cache group: a tuple of lists. kvtier keys the first group."""
    if not block_ids:
        return []
    first = block_ids[0]
    return list(first) if isinstance(first, (list, tuple)) else list(block_ids)


def _scheduled(scheduler_output: Any) -> Iterator[tuple[str, Any, bool]]:
    """(request id, block ids, whether they replace the known ones) per scheduled request: a new
    request's ids (also a preempted one resumed, in vLLM versions that send it as new) and a
    resumed request's ids are its whole block table; other requests' are appended."""
    for new in scheduler_output.scheduled_new_reqs:
        yield new.req_id, new.block_ids, True
    cached = scheduler_output.scheduled_cached_reqs
    if cached is None:
        return
    resumed = set(getattr(cached, "resumed_req_ids", None) or ())
    old_flags = getattr(cached, "resumed_from_preemption", None)  # vLLM before resumed_req_ids
    for i, req_id in enumerate(cached.req_ids):
        flag = req_id in resumed or bool(old_flags[i] if old_flags is not None else False)
        yield req_id, cached.new_block_ids[i], flag


class SchedulerSide:
    def __init__(self, link: Link, block_tokens: int, namespaces: list[str], load_async: bool) -> None:
        self.link = link
        self.block_tokens = block_tokens
        self.namespaces = namespaces  # one per TP rank
        self.load_async = load_async
        self._requests: dict[str, _Request] = {}
        self._keys: dict[str, list[list[bytes]]] = {}
        self._matched: dict[str, tuple[int, int]] = {}  # req -> (local computed tokens, external)
        self._step_loads: dict[str, BlockTransfer] = {}

    # --- keys -------------------------------------------------------------------------------

    def keys(self, req_id: str, tokens: Any, n_blocks: int) -> list[list[bytes]]:
        """Per rank, the keys of the request's first ``n_blocks`` blocks (memoised, extended)."""
        have = self._keys.setdefault(req_id, [[] for _ in self.namespaces])
        b = self.block_tokens
        for rank, ns in enumerate(self.namespaces):
            chain = have[rank]
            if len(chain) < n_blocks:
                more = [int(t) for t in tokens[len(chain) * b : n_blocks * b]]
                chain.extend(chain_keys(more, b, ns, parent=chain[-1] if chain else None))
        return [chain[:n_blocks] for chain in have]

    # --- vLLM's scheduler-side calls ---------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        b = self.block_tokens
        tokens = _tokens(request)
        # vLLM must compute at least one token itself: the last one stays outside the hit.
        limit = (len(tokens) - 1) // b
        start = num_computed_tokens // b
        if limit <= start:
            return 0, False
        client = self.link.get()
        if client is None:
            return 0, False
        keys = self.keys(request.request_id, tokens, limit)
        span = limit - start
        try:  # one round trip for every rank's chain; a block counts only if every rank holds it
            present = client.lookup([k for rank_keys in keys for k in rank_keys[start:limit]]).present
        except KvtierError as e:
            log.warning("kvtier: lookup failed (%s); request %s recomputes", e, request.request_id)
            return 0, False
        held = span
        for rank in range(len(keys)):
            flags = present[rank * span : (rank + 1) * span]
            held = min(held, flags.index(False) if False in flags else span)
        hit = (start + held) * b - num_computed_tokens
        if hit <= 0:
            return 0, False
        self._matched[request.request_id] = (num_computed_tokens, hit)
        return hit, self.load_async

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        req_id = request.request_id
        state = self._requests.get(req_id)
        if state is None:
            state = self._requests[req_id] = _Request(request)
        state.request = request
        matched = self._matched.pop(req_id, None)
        if num_external_tokens == 0:
            return
        if matched is None or matched[1] != num_external_tokens:
            # Not what this connector offered (another connector of a MultiConnector): no load.
            return
        computed = matched[0]
        b = self.block_tokens
        start, end = computed // b, (computed + num_external_tokens) // b
        block_ids = _first_group(blocks.get_block_ids())
        keys = self.keys(req_id, _tokens(request), end)
        self._step_loads[req_id] = BlockTransfer(
            req_id, block_ids[start:end], [k[start:end] for k in keys], start
        )
        state.loading, state.loading_from = block_ids[start:end], start
        state.next_save = max(state.next_save, end)

    def build_connector_meta(self, scheduler_output: Any) -> KvtierConnectorMetadata:
        meta = KvtierConnectorMetadata(
            loads=self._step_loads,
            async_loads=set(self._step_loads) if self.load_async else set(),
            preempted=set(getattr(scheduler_output, "preempted_req_ids", None) or ()),
        )
        self._step_loads = {}
        b = self.block_tokens
        for req_id, new_block_ids, replace in _scheduled(scheduler_output):
            state = self._requests.get(req_id)
            if state is None:
                continue
            if replace:
                state.block_ids = []
            state.block_ids.extend(_first_group(new_block_ids))
            req = state.request
            scheduled = scheduler_output.num_scheduled_tokens.get(req_id, 0)
            # Tokens whose KV exists once this step ran; never tokens not yet known (async
            # scheduling) nor speculative ones: only full blocks of real tokens are published.
            total = min(req.num_computed_tokens + scheduled, req.num_tokens)
            full = min(total // b, len(state.block_ids))
            if full <= state.next_save:
                continue
            keys = self.keys(req_id, _tokens(req), full)
            first = state.next_save
            meta.saves.append(BlockTransfer(req_id, state.block_ids[first:full], [k[first:full] for k in keys], first))
            state.next_save = full
        return meta

    def update_connector_output(self, connector_output: Any) -> None:
        invalid = set(getattr(connector_output, "invalid_block_ids", None) or ())
        finished = set(getattr(connector_output, "finished_recving", None) or ())
        for req_id, state in self._requests.items():
            if state.loading is None:
                continue
            bad = [i for i, block in enumerate(state.loading) if block in invalid]
            if bad:
                # vLLM recomputes from the first failed block: those blocks are saved again.
                state.next_save = min(state.next_save, state.loading_from + bad[0])
            if req_id in finished or not self.load_async:
                state.loading = None  # a synchronous load reports its errors in its own step

    def request_finished(self, request: Any, block_ids: Any) -> tuple[bool, dict[str, Any] | None]:
        req_id = request.request_id
        self._requests.pop(req_id, None)
        self._keys.pop(req_id, None)
        self._matched.pop(req_id, None)
        self._step_loads.pop(req_id, None)
        # Saves finish within the step that issued them: nothing outlives the request's blocks.
        return False, None
