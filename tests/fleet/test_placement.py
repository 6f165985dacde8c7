"""The placement function: unit cases and properties (hypothesis)."""

from __future__ import annotations

import random

import pytest
from controlplane.fleet.placement import (
    Gpu,
    Node,
    Placed,
    ReplicaRequest,
    bytes_per_parameter,
    estimate_memory_mib,
    place_replicas,
)
from hypothesis import given, settings
from hypothesis import strategies as st

GIB = 1024


def node(name, *sizes, labels=None, schedulable=True):
    return Node(
        name=name,
        gpus=tuple(Gpu(i, s) for i, s in enumerate(sizes)),
        labels=labels or {},
        schedulable=schedulable,
    )


def req(id, mem=10 * GIB, tp=1, dep="d", selector=None, fraction=None):
    return ReplicaRequest(
        id=id,
        deployment=dep,
        tensor_parallel_size=tp,
        memory_mib=None if fraction else mem,
        memory_fraction=fraction,
        selector=selector or {},
    )


# ------------------------------------------------------------------ memory estimate
def test_bytes_per_parameter_table():
    assert bytes_per_parameter("float32") == 4
    assert bytes_per_parameter("bfloat16") == 2
    assert bytes_per_parameter("float16") == 2
    assert bytes_per_parameter("bfloat16", "fp8") == 1
    assert bytes_per_parameter("bfloat16", "int8") == 1
    for q in ("awq", "gptq", "bitsandbytes"):
        assert bytes_per_parameter("float16", q) == 0.5
    with pytest.raises(ValueError):
        bytes_per_parameter("float64")


def test_memory_estimate_scales_with_dtype_context_and_tp():
    base = dict(parameter_count=7_000_000_000, max_model_len=4096)
    bf16 = estimate_memory_mib(dtype="bfloat16", **base)
    # 14 GB of weights + ~2 GiB of KV + 10 % + 1 GiB context
    assert 17_000 < bf16 < 19_500
    assert estimate_memory_mib(dtype="float32", **base) > 1.8 * bf16 - 2 * GIB
    assert estimate_memory_mib(dtype="bfloat16", quantization="awq", **base) < bf16 / 2
    longer = estimate_memory_mib(
        dtype="bfloat16", parameter_count=7_000_000_000, max_model_len=32768
    )
    assert longer > bf16 + 10 * GIB  # the KV cache of 32k tokens is ~16 GiB
    tp2 = estimate_memory_mib(dtype="bfloat16", tensor_parallel_size=2, **base)
    assert tp2 < bf16 / 2 + GIB


def test_memory_estimate_refuses_nonsense():
    with pytest.raises(ValueError):
        estimate_memory_mib(parameter_count=0, max_model_len=10)


# ------------------------------------------------------------------ unit cases
def test_binpack_fills_the_fullest_gpu_that_fits():
    nodes = [node("a", 80 * GIB, 80 * GIB), node("b", 80 * GIB)]
    existing = [Placed("a", (1,), 60 * GIB, "x"), Placed("b", (0,), 65 * GIB, "x")]
    result = place_replicas([req("r1", 10 * GIB)], nodes, existing, "binpack")
    assert result.assignments["r1"].node == "b"  # 15 GiB left: the fullest that fits
    result = place_replicas([req("r1", 18 * GIB)], nodes, existing, "binpack")
    assert result.assignments["r1"].node == "a" and result.assignments["r1"].gpu_indices == (1,)


def test_spread_goes_to_the_emptiest_node_and_away_from_siblings():
    nodes = [node("a", 80 * GIB, 80 * GIB), node("b", 80 * GIB, 80 * GIB), node("c", 40 * GIB)]
    existing = [Placed("a", (0,), 10 * GIB, "other")]
    result = place_replicas(
        [req("r1", dep="d"), req("r2", dep="d"), req("r3", dep="d")], nodes, existing, "spread"
    )
    placed_on = sorted(a.node for a in result.assignments.values())
    assert placed_on == ["a", "b", "c"]  # one per node before doubling up
    assert not result.refusals


def test_binpack_packs_one_node_first():
    nodes = [node("a", 80 * GIB), node("b", 80 * GIB)]
    result = place_replicas([req(f"r{i}", 20 * GIB) for i in range(4)], nodes, (), "binpack")
    assert {a.node for a in result.assignments.values()} == {"a"}


def test_tensor_parallel_group_on_one_node():
    nodes = [node("a", 80 * GIB, 80 * GIB), node("b", 80 * GIB, 80 * GIB, 80 * GIB, 80 * GIB)]
    result = place_replicas([req("big", 70 * GIB, tp=4)], nodes)
    assert result.assignments["big"].node == "b"
    assert result.assignments["big"].gpu_indices == (0, 1, 2, 3)


def test_tensor_parallel_refused_when_no_node_has_enough_gpus():
    nodes = [node("a", 80 * GIB, 80 * GIB), node("b", 80 * GIB, 80 * GIB)]
    result = place_replicas([req("big", 10 * GIB, tp=4)], nodes)
    assert "tensor_parallel_size 4" in result.refusals["big"]
    assert "has 2" in result.refusals["big"]


def test_selector_is_honoured_and_explained():
    nodes = [
        node("a", 80 * GIB, labels={"gpu": "a100"}),
        node("h", 80 * GIB, labels={"gpu": "h100"}),
    ]
    result = place_replicas([req("r", selector={"gpu": "h100"})], nodes)
    assert result.assignments["r"].node == "h"
    result = place_replicas([req("r", selector={"gpu": "l4"})], nodes)
    assert "selector gpu=l4" in result.refusals["r"]


def test_unschedulable_nodes_are_skipped():
    nodes = [node("a", 80 * GIB, schedulable=False)]
    result = place_replicas([req("r")], nodes)
    assert "lost or cordoned" in result.refusals["r"]
    assert "no nodes" in place_replicas([req("r")], []).refusals["r"]


def test_too_big_for_any_gpu_is_explained():
    result = place_replicas([req("r", 100 * GIB)], [node("a", 80 * GIB)])
    assert "largest matching GPU has 81920 MiB" in result.refusals["r"]


def test_full_cluster_is_explained_with_the_best_free_memory():
    nodes = [node("a", 80 * GIB)]
    result = place_replicas([req("r", 30 * GIB)], nodes, [Placed("a", (0,), 60 * GIB)])
    assert "not enough free GPU memory" in result.refusals["r"]
    assert "20480 MiB" in result.refusals["r"]


def test_memory_fraction_is_of_each_gpu():
    nodes = [node("a", 40 * GIB, 80 * GIB)]
    result = place_replicas([req("r", fraction=0.5), req("s", fraction=0.5)], nodes, (), "binpack")
    assert set(result.assignments) == {"r", "s"}
    big = place_replicas([req("r", fraction=0.9)], nodes, [Placed("a", (0,), 10 * GIB)], "binpack")
    assert big.assignments["r"].gpu_indices == (1,)


def test_never_overcommits_with_existing_reservations():
    nodes = [node("a", 80 * GIB)]
    existing = [Placed("a", (0,), 75 * GIB)]
    result = place_replicas([req("r", 6 * GIB)], nodes, existing)
    assert "r" in result.refusals
    assert "r" in place_replicas([req("r", 5 * GIB)], nodes, existing).assignments


def test_unknown_strategy_raises():
    with pytest.raises(ValueError):
        place_replicas([], [], (), "random")


# ------------------------------------------------------------------ properties
gpu_sizes = st.sampled_from([16 * GIB, 24 * GIB, 40 * GIB, 80 * GIB])
labels = st.dictionaries(st.sampled_from(["zone", "gpu"]), st.sampled_from(["x", "y"]), max_size=2)


@st.composite
def clusters(draw):
    count = draw(st.integers(0, 6))
    nodes = []
    for i in range(count):
        sizes = draw(st.lists(gpu_sizes, min_size=1, max_size=8))
        nodes.append(
            node(f"n{i}", *sizes, labels=draw(labels), schedulable=draw(st.booleans()) or i == 0)
        )
    existing = []
    for n in nodes:
        for gpu in n.gpus:
            if draw(st.booleans()):
                existing.append(
                    Placed(n.name, (gpu.index,), draw(st.integers(0, gpu.total_mib)), "old")
                )
    requests = draw(
        st.lists(
            st.builds(
                ReplicaRequest,
                id=st.uuids().map(str),
                deployment=st.sampled_from(["d1", "d2", "d3"]),
                tensor_parallel_size=st.sampled_from([1, 1, 1, 2, 4, 8]),
                memory_mib=st.integers(1, 90 * GIB),
                memory_fraction=st.one_of(st.none(), st.floats(0.05, 1.0)),
                selector=labels,
            ),
            max_size=25,
            unique_by=lambda r: r.id,
        )
    )
    return nodes, existing, requests


def _check_invariants(nodes, existing, requests, result):
    by_name = {n.name: n for n in nodes}
    # every request is answered exactly once, and every refusal is explained
    assert set(result.assignments) | set(result.refusals) == {r.id for r in requests}
    assert not set(result.assignments) & set(result.refusals)
    assert all(isinstance(why, str) and why.strip() for why in result.refusals.values())
    reserved = {(n.name, g.index): 0 for n in nodes for g in n.gpus}
    for p in existing:
        for i in p.gpu_indices:
            reserved[(p.node, i)] += p.memory_mib
    requests_by_id = {r.id: r for r in requests}
    for rid, a in result.assignments.items():
        r = requests_by_id[rid]
        n = by_name[a.node]
        assert n.schedulable
        assert all(n.labels.get(k) == v for k, v in r.selector.items())
        # a TP group: N distinct GPUs of one node
        assert len(a.gpu_indices) == r.tensor_parallel_size == len(set(a.gpu_indices))
        gpus = {g.index: g for g in n.gpus}
        for i in a.gpu_indices:
            reserved[(a.node, i)] += r.need_on(gpus[i])
    # no GPU over-committed by this placement
    for n in nodes:
        for g in n.gpus:
            pre = sum(
                p.memory_mib for p in existing if p.node == n.name and g.index in p.gpu_indices
            )
            if reserved[(n.name, g.index)] != pre:
                assert reserved[(n.name, g.index)] <= g.total_mib
    # refusals are real: at the end, the refused replica still fits nowhere
    for rid in result.refusals:
        r = requests_by_id[rid]
        if r.tensor_parallel_size < 1:
            continue
        for n in nodes:
            if not n.schedulable or any(n.labels.get(k) != v for k, v in r.selector.items()):
                continue
            fits = [g for g in n.gpus if g.total_mib - reserved[(n.name, g.index)] >= r.need_on(g)]
            assert len(fits) < r.tensor_parallel_size, (rid, n.name, result.refusals[rid])


@settings(max_examples=150, deadline=None)
@given(clusters(), st.sampled_from(["binpack", "spread"]))
def test_properties(cluster, strategy):
    nodes, existing, requests = cluster
    result = place_replicas(requests, nodes, existing, strategy)
    _check_invariants(nodes, existing, requests, result)


@settings(max_examples=60, deadline=None)
@given(clusters(), st.sampled_from(["binpack", "spread"]), st.randoms(use_true_random=False))
def test_deterministic_whatever_the_input_order(cluster, strategy, rnd):
    nodes, existing, requests = cluster
    first = place_replicas(requests, nodes, existing, strategy)
    shuffled_requests, shuffled_nodes = list(requests), list(nodes)
    rnd.shuffle(shuffled_requests)
    rnd.shuffle(shuffled_nodes)
    again = place_replicas(shuffled_requests, shuffled_nodes, existing, strategy)
    assert first == again


def test_large_cluster_fills_to_capacity():
    rng = random.Random(7)
    nodes = [node(f"n{i:03}", *([80 * GIB] * 8)) for i in range(50)]
    requests = [req(f"r{i}", rng.choice([20, 40]) * GIB, tp=rng.choice([1, 2])) for i in range(300)]
    result = place_replicas(requests, nodes, (), "binpack")
    _check_invariants(nodes, [], requests, result)
    assert not result.refusals
