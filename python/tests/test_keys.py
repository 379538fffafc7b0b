"""chain_keys against docs/keys.md's vectors and against Node's chainKeys on random inputs."""

from __future__ import annotations

import random

import pytest
from node_ref import node_eval

from kvtier import KvtierError, chain_keys, namespace_root, rank_namespace

ROOT = "ea385ad889e0c09372a1376cdd30fe67973f540653e05a70fe11648772c84bc6"


def hexes(keys: list[bytes]) -> list[str]:
    return [k.hex() for k in keys]


def test_vectors_of_docs_keys_md() -> None:
    assert namespace_root("").hex() == ROOT
    assert namespace_root("tenant-a").hex() == "a35b1cd559ccb9b9be276a5f0986b828040d16a7a55e80e2569ab58b228016d1"
    assert hexes(chain_keys([1, 2, 3, 4, 5, 6, 7, 8], 4)) == [
        "2aed14294497603b2af0edd1687418cac16edc55a5a0870552a8d24f104adb8d",
        "84b3cac8df2e1657b7e27129463e6acc73af919b797b1820fdee41bd8e482c23",
    ]
    assert hexes(chain_keys([1, 2, 3, 4, 5, 6, 7, 8, 9], 4, "tenant-a")) == [
        "084f0d15c836c4465d3e35b61511a55959bab4474f531077118bedc7a7b3ce6b",
        "dae99262a19b352779fdb8380bac8e68b67db426250a9e240866cf7e06eb371d",
    ]
    assert hexes(chain_keys([4294967295, 0, 65536], 3)) == [
        "442d627742e6e507bf8e001dd3e5d374f5b74749b3ecb1f69e27e81d2bd534a8"
    ]


def test_parent_continues_a_chain() -> None:
    tokens = list(range(100, 124))
    whole = chain_keys(tokens, 4, "ns")
    assert chain_keys(tokens[8:], 4, parent=whole[1]) == whole[2:]


def test_partial_block_gets_no_key_and_namespaces_are_disjoint() -> None:
    assert chain_keys([1, 2, 3], 4) == []
    assert set(chain_keys(list(range(64)), 8, "a")).isdisjoint(chain_keys(list(range(64)), 8, "b"))


def test_rank_namespace_salts_each_rank() -> None:
    assert rank_namespace("t", 1, 4) == "t/tp1of4"
    ranks = [chain_keys(list(range(32)), 16, rank_namespace("t", r, 2)) for r in range(2)]
    assert set(ranks[0]).isdisjoint(ranks[1])
    with pytest.raises(KvtierError) as e:
        rank_namespace("t", 2, 2)
    assert e.value.code == "KVTIER_BAD_ARGUMENT"


@pytest.mark.parametrize(
    "args",
    [([1, -1], 1, "", None), ([1, 2**32], 1, "", None), ([1], 0, "", None), ([1], 1, "", b"short")],
)
def test_bad_input_is_refused(args: tuple) -> None:
    with pytest.raises(KvtierError) as e:
        chain_keys(*args)
    assert e.value.code == "KVTIER_BAD_ARGUMENT"


def test_matches_node_chain_keys_on_random_tokens() -> None:
    rng = random.Random(1234)
    cases = []
    for i in range(60):
        block = rng.choice([1, 2, 3, 4, 16, 32])
        count = rng.randrange(0, 200)
        tokens = [rng.choice([0, 1, 0xFFFFFFFF, rng.getrandbits(32), rng.getrandbits(16)]) for _ in range(count)]
        namespace = rng.choice(["", "tenant-a", "ünïcødé/テナント", f"ns{i}", rank_namespace("m", i % 4, 4)])
        parent = rng.randbytes(32).hex() if i % 5 == 0 else None
        cases.append({"tokens": tokens, "block": block, "namespace": namespace, "parent": parent})
    expected = node_eval(
        "output = input.map((c) => kvtier.chainKeys(c.tokens, {"
        " blockTokens: c.block, namespace: c.namespace, ...(c.parent ? { parent: c.parent } : {}) }).keys());",
        cases,
    )
    for case, want in zip(cases, expected):
        parent = bytes.fromhex(case["parent"]) if case["parent"] else None
        got = chain_keys(case["tokens"], case["block"], case["namespace"], parent)
        assert hexes(got) == want, case
    assert sum(len(w) for w in expected) > 200  # the cases really produced keys
