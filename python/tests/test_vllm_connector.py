"""kvtier.vllm.KvtierConnector driven through vLLM's call order against a real `kvtier serve`.

Stand-ins shaped like vLLM's objects (tests/_vllm_standins.py); KV caches are CPU arrays or
tensors in memfds, registered in place. Every token's KV in the engine's pool, loaded or
computed, is compared with what the fake model computes for it.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from _adapters_support import ARRAY_KINDS, Sidecar
from _vllm_standins import BLOCK, BLOCK_BYTES, MODEL, Engine, Request

from kvtier import EngineClient, HostPool, chain_keys, kv_layout, rank_namespace
from kvtier.vllm import HAVE_VLLM, KvtierConnector, KvtierConnectorMetadata


def tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, 50000) for _ in range(n)]


def held(socket: str, toks: list[int], world: int = 1) -> list[int]:
    """Per rank, how many leading full blocks of ``toks`` the sidecar holds."""
    with EngineClient.connect(socket, name="probe") as client:
        out = []
        for rank in range(world):
            ns = rank_namespace(f"vllm/{MODEL}/auto", rank, world)
            out.append(client.lookup(chain_keys(toks, BLOCK, ns)).prefix)
        return out


@pytest.fixture
def sidecar(tmp_path: Path):
    started: list[Sidecar] = []

    def start(host_bytes: str = "1MiB") -> Sidecar:
        s = Sidecar(tmp_path / "sidecar", BLOCK_BYTES, host_bytes)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


def test_imports_without_vllm() -> None:
    from kvtier._vllm_base import KVConnectorBase_V1, KVConnectorMetadata

    # vLLM's base classes where vLLM is installed, the local ones of the same shape elsewhere.
    assert issubclass(KvtierConnector, KVConnectorBase_V1)
    assert issubclass(KvtierConnectorMetadata, KVConnectorMetadata)
    assert KVConnectorBase_V1.__module__.startswith("vllm" if HAVE_VLLM else "kvtier")
    for name in ("get_num_new_matched_tokens", "update_state_after_alloc", "build_connector_meta",
                 "update_connector_output", "request_finished", "register_kv_caches", "start_load_kv",
                 "wait_for_layer_load", "save_kv_layer", "wait_for_save", "get_finished",
                 "get_block_ids_with_load_errors"):  # fmt: skip
        assert callable(getattr(KvtierConnector, name))


@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_prefix_hits_partial_hits_async_loads_and_preemption(sidecar, kind: str) -> None:
    side = sidecar()
    engine = Engine(side.socket, kind, world=2)
    try:
        # A: nothing cached; it computes its prompt and a few tokens, and kvtier stores each
        # block once it is full on both ranks, never the partial tail.
        a = Request("A", tokens(1, 22), max_tokens=3)
        engine.add(a)
        engine.run_until("A finishing", lambda: "A" in engine.finished)
        assert engine.hits["A"] == 0
        assert a.num_tokens == 25  # 24 tokens computed (6 full blocks), the last one never fed back
        assert held(side.socket, a.all_token_ids, world=2) == [6, 6]

        # B shares A's first 16 tokens (a partial hit); C is A's prompt with 8 tokens already in
        # vLLM's own prefix cache. Both load asynchronously and are scheduled in a later step.
        b = Request("B", a.prompt_token_ids[:16] + tokens(2, 9), max_tokens=2)
        c = Request("C", list(a.prompt_token_ids), max_tokens=1)
        engine.add(b)
        engine.add(c, local_hit_tokens=8)
        engine.step()
        assert set(engine.remote) == {"B", "C"}  # waiting for their loads, not scheduled
        assert engine.hits["B"] == 16
        assert engine.hits["C"] == 20 - 8  # blocks 2..4: the last prompt token stays to compute
        engine.run_until("B and C finishing", lambda: {"B", "C"} <= set(engine.finished))
        assert not engine.invalid

        # D is preempted mid-decode (its blocks freed and scribbled over) and resumed: it loads
        # back from kvtier what it had saved, and its bytes check out again.
        d = Request("D", tokens(3, 18), max_tokens=6)
        engine.add(d)
        engine.run_until("D decoding", lambda: len(d.output_token_ids) >= 3)
        engine.preempt("D")
        engine.run_until("D finishing", lambda: "D" in engine.finished)
        assert engine.hits["D"] == 20  # 21 tokens known at preemption: 5 full blocks loaded back
        assert not engine.invalid
        assert held(side.socket, d.all_token_ids, world=2)[0] >= 5
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_block_evicted_between_lookup_and_load_is_reported_and_recomputed(sidecar, kind: str) -> None:
    side = sidecar(host_bytes=f"{16 * BLOCK_BYTES}")
    engine = Engine(side.socket, kind, world=1, load_async=False)
    try:
        e = Request("E", tokens(4, 21), max_tokens=1)
        engine.add(e)
        engine.run_until("E finishing", lambda: "E" in engine.finished)
        assert held(side.socket, e.prompt_token_ids) == [5]

        def evict() -> None:  # another engine fills the sidecar: E's blocks go
            layout = kv_layout("kv-first", num_layers=2, num_blocks=32, block_tokens=BLOCK, kv_heads=2, head_dim=32)
            with EngineClient.connect(side.socket, name="noise") as client:
                pool: HostPool = client.register_host_pool(layout, name="noise")
                noise = chain_keys(tokens(99, 32 * BLOCK), BLOCK, "noise")
                client.save(pool, noise, list(range(32)))
            assert held(side.socket, e.prompt_token_ids) == [0]

        f = Request("F", list(e.prompt_token_ids), max_tokens=1)
        engine.add(f)
        engine.between = evict  # after the scheduler's lookup, before the worker's load
        engine.step()
        assert engine.hits["F"] == 20
        assert len(engine.invalid) == 5  # every block of the load reported, so vLLM recomputes
        engine.run_until("F finishing", lambda: "F" in engine.finished)
        assert held(side.socket, f.prompt_token_ids) == [5]  # recomputed blocks stored again
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_sidecar_killed_between_lookup_and_load_then_restarted(sidecar, kind: str) -> None:
    side = sidecar()
    engine = Engine(side.socket, kind, world=1)
    try:
        g = Request("G", tokens(5, 17), max_tokens=1)
        engine.add(g)
        engine.run_until("G finishing", lambda: "G" in engine.finished)
        h = Request("H", list(g.prompt_token_ids), max_tokens=2)
        engine.add(h)
        engine.between = side.kill  # SIGKILL with H's asynchronous load about to go out
        engine.step()
        assert engine.hits["H"] == 16
        engine.run_until("H finishing", lambda: "H" in engine.finished)
        assert len(engine.invalid) == 4  # H's load failed whole; vLLM recomputed it all
        assert h.num_computed_tokens == h.num_tokens  # every token computed, every byte checked

        # A fresh sidecar on the same socket: the connectors reconnect and re-register.
        side2 = sidecar()
        i = Request("I", tokens(6, 13), max_tokens=1)
        engine.add(i)
        engine.run_until("I finishing", lambda: "I" in engine.finished)
        assert engine.hits["I"] == 0
        assert held(side2.socket, i.prompt_token_ids) == [3]
        j = Request("J", list(i.prompt_token_ids), max_tokens=1)
        engine.add(j)
        engine.run_until("J finishing", lambda: "J" in engine.finished)
        assert engine.hits["J"] == 12
    finally:
        engine.close()


def test_a_worker_refuses_caches_the_sidecar_cannot_reach(sidecar) -> None:
    import numpy as np

    from kvtier import KvtierError
    from kvtier.vllm import KVConnectorRole
    from _vllm_standins import vllm_config

    side = sidecar()
    worker = KvtierConnector(vllm_config(side.socket, 1, 0), KVConnectorRole.WORKER, None)
    private = {"l0": np.zeros((2, 8, BLOCK, 2, 32), dtype=np.uint16), "l1": np.zeros((2, 8, BLOCK, 2, 32), dtype=np.uint16)}
    worker.register_kv_caches(private)  # anonymous memory: not registered, logged
    assert worker.worker is not None and worker.worker.pool is None
    with EngineClient.connect(side.socket) as client, pytest.raises(KvtierError) as bad:
        worker.worker._register(client)
    assert bad.value.code == "KVTIER_BAD_ARGUMENT"
    assert "shared file mapping" in bad.value.message
    worker.shutdown()
