"""Stand-ins shaped like vLLM's objects (as read at vLLM commit 003df2961dd8: v1/request.py's
Request, v1/core/kv_cache_manager.py's KVCacheBlocks, v1/core/sched/output.py's SchedulerOutput,
NewRequestData and CachedRequestData, v1/outputs.py's KVConnectorOutput, config's VllmConfig and
KVTransferConfig) and a small engine that calls a connector in vLLM's order:

  scheduler: get_num_new_matched_tokens -> update_state_after_alloc -> build_connector_meta
  workers:   bind_connector_metadata -> start_load_kv -> wait_for_layer_load (per layer) ->
             forward -> save_kv_layer (per layer) -> wait_for_save -> get_finished ->
             get_block_ids_with_load_errors -> clear_connector_metadata
  scheduler: update_connector_output -> (request_finished when a request ends)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from _adapters_support import SharedMemory, bits, token_kv

from kvtier.vllm import KvtierConnector, KVConnectorRole

LAYERS, BLOCK, HEADS, DIM = 2, 4, 2, 32
BLOCK_BYTES = 2 * LAYERS * BLOCK * HEADS * DIM * 2  # bf16: 2048
MODEL = "test-model"


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)


class KVCacheBlocks:
    def __init__(self, block_ids: list[int]) -> None:
        self._ids = list(block_ids)

    def get_block_ids(self) -> tuple[list[int], ...]:
        return (list(self._ids),)


@dataclass
class NewRequestData:
    req_id: str
    prompt_token_ids: list[int]
    block_ids: tuple[list[int], ...]
    num_computed_tokens: int


@dataclass
class CachedRequestData:
    req_ids: list[str]
    resumed_req_ids: set[str]
    new_token_ids: list[list[int]]
    all_token_ids: dict[str, list[int]]
    new_block_ids: list[tuple[list[int], ...] | None]
    num_computed_tokens: list[int]
    num_output_tokens: list[int]


@dataclass
class SchedulerOutput:
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: CachedRequestData
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    scheduled_spec_decode_tokens: dict[str, list[int]]
    scheduled_encoder_inputs: dict[str, list[int]]
    num_common_prefix_blocks: list[int]
    finished_req_ids: set[str]
    free_encoder_mm_hashes: list[str]
    preempted_req_ids: set[str] | None = None
    kv_connector_metadata: Any = None


@dataclass
class KVConnectorOutput:
    finished_sending: set[str] | None = None
    finished_recving: set[str] | None = None
    invalid_block_ids: set[int] = field(default_factory=set)


@dataclass
class KVTransferConfig:
    kv_connector: str
    kv_connector_module_path: str
    kv_role: str
    kv_connector_extra_config: dict[str, Any]


@dataclass
class CacheConfig:
    block_size: int
    cache_dtype: str = "auto"


@dataclass
class ModelConfig:
    model: str


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    rank: int = 0


@dataclass
class VllmConfig:
    kv_transfer_config: KVTransferConfig
    cache_config: CacheConfig
    model_config: ModelConfig
    parallel_config: ParallelConfig


@dataclass
class ForwardContext:
    no_compile_layers: dict[str, Any] = field(default_factory=dict)
    attn_metadata: Any = None


def vllm_config(socket: str, world: int = 1, rank: int | None = None, **extra: Any) -> VllmConfig:
    config = {"socket": socket, "retry_s": 0, "timeout": 10, **extra}
    if rank is not None:
        config["tp_rank"] = rank
    return VllmConfig(
        KVTransferConfig("KvtierConnector", "kvtier.vllm", "kv_both", config),
        CacheConfig(BLOCK),
        ModelConfig(MODEL),
        ParallelConfig(world, rank or 0),
    )


class Engine:
    """One scheduler connector and ``world`` worker connectors over CPU KV caches in memfds."""

    def __init__(self, socket: str, kind: str, world: int = 1, num_blocks: int = 48, **extra: Any) -> None:
        self.world = world
        self.num_blocks = num_blocks
        self.scheduler = KvtierConnector(vllm_config(socket, world, **extra), KVConnectorRole.SCHEDULER, None)
        self.workers: list[KvtierConnector] = []
        self.caches: list[dict[str, Any]] = []
        self.memory: list[SharedMemory] = []
        layer_shape = (2, num_blocks, BLOCK, HEADS, DIM)
        layer_bytes = int(np.prod(layer_shape)) * 2
        for rank in range(world):
            memory = SharedMemory(LAYERS * layer_bytes, f"vllm-kv-tp{rank}")
            caches = {f"model.layers.{i}.self_attn.attn": memory.view(i * layer_bytes, layer_shape, kind) for i in range(LAYERS)}
            worker = KvtierConnector(vllm_config(socket, world, rank, **extra), KVConnectorRole.WORKER, None)
            worker.register_kv_caches(caches)
            self.workers.append(worker)
            self.caches.append(caches)
            self.memory.append(memory)
        self.free = list(range(num_blocks))
        random.Random(7).shuffle(self.free)  # block ids out of order, as a busy engine's are
        self.waiting: list[Request] = []
        self.remote: dict[str, tuple[Request, list[int], int, int, set[int]]] = {}  # + failed blocks
        self.recv_counts: dict[str, int] = {}
        self.ready: set[str] = set()
        self.running: dict[str, tuple[Request, list[int]]] = {}
        self.local_hits: dict[str, int] = {}
        self.resumed: set[str] = set()
        self.preempted_now: set[str] = set()
        self.finished_ids: set[str] = set()
        self.finished: dict[str, Request] = {}
        self.hits: dict[str, int] = {}  # tokens kvtier provided, per admission
        self.invalid: set[int] = set()  # every block id reported failed
        self.sync_loads: dict[str, tuple[int, list[int]]] = {}
        self.steps = 0
        self.between: Callable[[], None] | None = None  # runs after build_connector_meta

    # --- the model --------------------------------------------------------------------------

    def _write(self, req: Request, blocks: list[int], start: int, end: int) -> None:
        for rank, caches in enumerate(self.caches):
            layers = [bits(t) for t in caches.values()]
            for p in range(start, end):
                kv = token_kv(req.all_token_ids, p, rank, (LAYERS, 2, HEADS, DIM))
                for i, layer in enumerate(layers):
                    layer[:, blocks[p // BLOCK], p % BLOCK] = kv[i]

    def check(self, req: Request, blocks: list[int]) -> int:
        """Compares every computed token's KV in every rank's pool with what the model computes."""
        for rank, caches in enumerate(self.caches):
            layers = [bits(t) for t in caches.values()]
            for p in range(req.num_computed_tokens):
                want = token_kv(req.all_token_ids, p, rank, (LAYERS, 2, HEADS, DIM))
                for i, layer in enumerate(layers):
                    got = layer[:, blocks[p // BLOCK], p % BLOCK]
                    assert np.array_equal(got, want[i]), f"{req.request_id}: rank {rank} token {p} layer {i} differs"
        return req.num_computed_tokens

    def _scribble(self, blocks: list[int]) -> None:
        rng = np.random.default_rng(len(blocks) + self.steps)
        for caches in self.caches:
            for t in caches.values():
                b = bits(t)
                for block in blocks:
                    b[:, block] = rng.integers(0, 1 << 16, b[:, block].shape, dtype=np.uint16)

    # --- requests ---------------------------------------------------------------------------

    def add(self, req: Request, local_hit_tokens: int = 0) -> None:
        self.local_hits[req.request_id] = local_hit_tokens
        self.waiting.append(req)

    def preempt(self, req_id: str) -> None:
        req, blocks = self.running.pop(req_id)
        self._scribble(blocks)
        self.free.extend(blocks)
        req.num_computed_tokens = 0
        self.local_hits[req_id] = 0
        self.resumed.add(req_id)
        self.preempted_now.add(req_id)
        self.waiting.insert(0, req)

    def _alloc(self, n: int) -> list[int]:
        assert len(self.free) >= n, "the test engine ran out of blocks"
        out, self.free = self.free[:n], self.free[n:]
        return out

    # --- one step ---------------------------------------------------------------------------

    def step(self) -> None:
        self.steps += 1
        new: list[NewRequestData] = []
        cached = CachedRequestData([], set(), [], {}, [], [], [])
        scheduled: dict[str, int] = {}
        for req in list(self.waiting):
            self.waiting.remove(req)
            rid = req.request_id
            local = self.local_hits.get(rid, 0)
            ext, is_async = self.scheduler.get_num_new_matched_tokens(req, local)
            ext = ext or 0
            blocks = self._alloc(-(-req.num_tokens // BLOCK))
            if local:  # vLLM's own prefix cache held these: the model's bytes are there already
                req.num_computed_tokens = 0
                self._write(req, blocks, 0, local)
            self.scheduler.update_state_after_alloc(req, KVCacheBlocks(blocks), ext)
            self.hits[rid] = ext
            if is_async:
                assert ext > 0, "asynchronous with nothing to load"
                req.num_computed_tokens = local
                self.remote[rid] = (req, blocks, local, ext, set())
                continue
            if ext:
                self.sync_loads[rid] = (local // BLOCK, blocks[local // BLOCK : (local + ext) // BLOCK])
            req.num_computed_tokens = local + ext
            self._admit(req, blocks, new, cached, scheduled, check=not ext)  # loads run in the step
        for rid in sorted(self.ready):
            req, blocks, local, ext, failed = self.remote.pop(rid)
            first_bad = [i for i, b in enumerate(blocks) if b in failed]
            # vLLM keeps what loaded before the first failed block and recomputes from there.
            req.num_computed_tokens = first_bad[0] * BLOCK if first_bad else local + ext
            self.scheduler.update_state_after_alloc(req, KVCacheBlocks(blocks), 0)
            self._admit(req, blocks, new, cached, scheduled, check=True)
        self.ready = set()
        for rid, (req, blocks) in self.running.items():
            if rid in scheduled:
                continue
            grow = None
            if req.num_tokens > len(blocks) * BLOCK:
                extra = self._alloc(1)
                blocks.extend(extra)
                grow = (extra,)
            cached.req_ids.append(rid)
            cached.new_block_ids.append(grow)
            cached.num_computed_tokens.append(req.num_computed_tokens)
            cached.num_output_tokens.append(len(req.output_token_ids))
            cached.new_token_ids.append([])
            scheduled[rid] = req.num_tokens - req.num_computed_tokens
        out = SchedulerOutput(
            new, cached, scheduled, sum(scheduled.values()), {}, {}, [0], self.finished_ids, [],
            preempted_req_ids=self.preempted_now or None,
        )  # fmt: skip
        self.finished_ids, self.preempted_now = set(), set()
        meta = self.scheduler.build_connector_meta(out)
        out.kv_connector_metadata = meta
        if self.between is not None:
            hook, self.between = self.between, None
            hook()
        recving: set[str] = set()
        invalid: set[int] = set()
        for worker in self.workers:
            worker.bind_connector_metadata(meta)
            worker.start_load_kv(ForwardContext())
            for name in self.caches[0]:
                worker.wait_for_layer_load(name)
            if worker is self.workers[0]:
                for rid, n in scheduled.items():
                    req, blocks = self.running[rid]
                    self._write(req, blocks, req.num_computed_tokens, req.num_computed_tokens + n)
            for name, t in self.caches[0].items():
                worker.save_kv_layer(name, t, None)
            worker.wait_for_save()
            _, done = worker.get_finished(set(out.finished_req_ids))
            invalid |= worker.get_block_ids_with_load_errors()
            worker.clear_connector_metadata()
            for rid in done or ():
                self.recv_counts[rid] = self.recv_counts.get(rid, 0) + 1
                if self.recv_counts[rid] == self.world:  # vLLM's KVOutputAggregator
                    recving.add(rid)
                    del self.recv_counts[rid]
        self.invalid |= invalid
        for req, blocks, local, ext, failed in self.remote.values():
            failed |= invalid & set(blocks[local // BLOCK : (local + ext) // BLOCK])
        self.scheduler.update_connector_output(KVConnectorOutput(None, recving or None, invalid))
        self.ready |= recving
        for rid, n in scheduled.items():
            req, blocks = self.running[rid]
            req.num_computed_tokens += n
            load = self.sync_loads.pop(rid, None)
            if load is not None:
                first, load_blocks = load
                bad = [i for i, b in enumerate(load_blocks) if b in invalid]
                if bad:  # vLLM recomputes from the first block that failed
                    req.num_computed_tokens = (first + bad[0]) * BLOCK
                    continue
            self.check(req, blocks)
            if len(req.output_token_ids) >= req.max_tokens:
                self.scheduler.request_finished(req, blocks)
                del self.running[rid]
                self._scribble(blocks)
                self.free.extend(blocks)
                self.finished_ids.add(rid)
                self.finished[rid] = req
            else:
                req.output_token_ids.append(1000 + (sum(req.all_token_ids) % 5000))

    def _admit(
        self, req: Request, blocks: list[int], new: list[NewRequestData], cached: CachedRequestData,
        scheduled: dict[str, int], check: bool,
    ) -> None:  # fmt: skip
        rid = req.request_id
        if check:
            self.check(req, blocks)  # loaded (and locally cached) bytes, before any compute
        self.running[rid] = (req, blocks)
        if rid in self.resumed:
            self.resumed.discard(rid)
            cached.req_ids.append(rid)
            cached.resumed_req_ids.add(rid)
            cached.new_block_ids.append((list(blocks),))
            cached.num_computed_tokens.append(req.num_computed_tokens)
            cached.num_output_tokens.append(len(req.output_token_ids))
            cached.new_token_ids.append([])
            cached.all_token_ids[rid] = req.all_token_ids
        else:
            new.append(NewRequestData(rid, list(req.prompt_token_ids), (list(blocks),), req.num_computed_tokens))
        scheduled[rid] = req.num_tokens - req.num_computed_tokens

    def run_until(self, what: str, done: Callable[[], bool], seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}")
            self.step()

    def close(self) -> None:
        for c in [self.scheduler, *self.workers]:
            c.shutdown()
