"""Where replicas run: a pure function from (replicas to place, nodes, what is already
placed, strategy) to (assignments, refusals). No Django, no I/O, deterministic.

Rules
- A replica needs ``memory_mib`` on each of its ``tensor_parallel_size`` GPUs, or, when it
  asks for a fraction of the GPU (``memory_fraction``), that fraction of each GPU's total.
- A tensor-parallel group of N takes N distinct GPUs on ONE node.
- A GPU is never over-committed: the memory reserved on it (already placed + assigned
  here) never exceeds its total.
- A replica only goes to a schedulable node whose labels contain its selector.
- ``binpack``: the fullest GPUs that still fit (fewest MiB left afterwards), so whole
  GPUs and nodes stay free for big tensor-parallel groups.
  ``spread``: first the node with the fewest replicas of the same deployment (so one
  node's loss takes out as few replicas as possible), then the emptiest node, and on it
  the emptiest GPUs.
- Replicas are placed biggest first (tensor-parallel size, then memory), ties broken by
  deployment and id, so the result does not depend on the order of the input.
- A replica that cannot be placed gets a reason a person can act on.

Memory estimate (``estimate_memory_mib``): weights = parameters x bytes per parameter
(fp32 4, fp16/bf16 2, fp8/int8 1, awq/gptq/bitsandbytes 0.5), split over the TP group;
plus the KV cache of one sequence of ``max_model_len`` tokens (vLLM refuses to start
without room for one) estimated from the parameter count with the usual decoder shape
(P ~ 12 L h^2 with L ~ h/128, i.e. h = (128 P / 12)^(1/3), no grouped-query attention,
so it errs on the large side: 0.5 MiB per token for a 7B model, as Llama-2-7B), KV in
the dtype of the weights (2 bytes for quantized models); plus 10 % for activations and
1 GiB for the CUDA context and graphs, per GPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Strategy = Literal["binpack", "spread"]
STRATEGIES: tuple[str, ...] = ("binpack", "spread")

MIB = 1024 * 1024
#: Bytes per parameter of the weights, by quantization (first) or dtype.
BYTES_PER_PARAMETER: dict[str, float] = {
    "float32": 4,
    "fp32": 4,
    "float16": 2,
    "fp16": 2,
    "bfloat16": 2,
    "bf16": 2,
    "auto": 2,  # vLLM's "auto" loads fp32 checkpoints as fp16
    "fp8": 1,
    "int8": 1,
    "awq": 0.5,
    "gptq": 0.5,
    "bitsandbytes": 0.5,
    "bnb": 0.5,
}
OVERHEAD_FRACTION = 0.10
CONTEXT_OVERHEAD_MIB = 1024


def bytes_per_parameter(dtype: str = "auto", quantization: str = "none") -> float:
    if quantization and quantization != "none":
        if quantization not in BYTES_PER_PARAMETER:
            raise ValueError(f"unknown quantization {quantization!r}")
        return BYTES_PER_PARAMETER[quantization]
    if dtype not in BYTES_PER_PARAMETER:
        raise ValueError(f"unknown dtype {dtype!r}")
    return BYTES_PER_PARAMETER[dtype]


def kv_cache_bytes_per_token(parameter_count: int, kv_bytes: float) -> float:
    """K and V for every layer: 2 x layers x hidden x bytes, shape guessed from P."""
    hidden = (128 * parameter_count / 12) ** (1 / 3)
    layers = max(1.0, hidden / 128)
    return 2 * layers * hidden * kv_bytes


def estimate_memory_mib(
    *,
    parameter_count: int,
    dtype: str = "auto",
    quantization: str = "none",
    max_model_len: int,
    tensor_parallel_size: int = 1,
) -> int:
    """MiB one GPU of the replica's tensor-parallel group needs (see the module doc)."""
    if parameter_count <= 0 or max_model_len <= 0 or tensor_parallel_size <= 0:
        raise ValueError("parameter_count, max_model_len and tensor_parallel_size must be > 0")
    weight_bytes = parameter_count * bytes_per_parameter(dtype, quantization)
    quantized = bool(quantization) and quantization != "none"
    kv_bytes = 2 if quantized else bytes_per_parameter(dtype, "none")
    kv = kv_cache_bytes_per_token(parameter_count, kv_bytes) * max_model_len
    per_gpu = (weight_bytes + kv) / tensor_parallel_size
    return math.ceil(per_gpu * (1 + OVERHEAD_FRACTION) / MIB) + CONTEXT_OVERHEAD_MIB


# --------------------------------------------------------------------------- inputs/outputs
@dataclass(frozen=True)
class Gpu:
    index: int
    total_mib: int


@dataclass(frozen=True)
class Node:
    name: str
    gpus: tuple[Gpu, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    schedulable: bool = True


@dataclass(frozen=True)
class ReplicaRequest:
    id: str
    deployment: str
    tensor_parallel_size: int = 1
    memory_mib: int | None = None  # per GPU
    memory_fraction: float | None = None  # of each GPU's total, instead of memory_mib
    selector: Mapping[str, str] = field(default_factory=dict)

    def need_on(self, gpu: Gpu) -> int:
        if self.memory_fraction is not None:
            return math.ceil(self.memory_fraction * gpu.total_mib)
        return self.memory_mib or 0


@dataclass(frozen=True)
class Placed:
    """A replica already running or reserved somewhere."""

    node: str
    gpu_indices: tuple[int, ...]
    memory_mib: int  # per GPU
    deployment: str = ""


@dataclass(frozen=True)
class Assignment:
    node: str
    gpu_indices: tuple[int, ...]
    memory_mib: int  # per GPU, reserved on each of gpu_indices


@dataclass
class PlacementResult:
    assignments: dict[str, Assignment]
    refusals: dict[str, str]


def _sort_key(request: ReplicaRequest):
    return (
        -request.tensor_parallel_size,
        -(request.memory_mib or 0),
        -(request.memory_fraction or 0.0),
        request.deployment,
        request.id,
    )


def _selector_text(selector: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))


class _Cluster:
    """Mutable free-memory book of the nodes while placing."""

    def __init__(self, nodes: Sequence[Node], existing: Iterable[Placed]):
        self.nodes = sorted(nodes, key=lambda n: n.name)
        self.by_name = {n.name: n for n in self.nodes}
        self.free: dict[str, dict[int, int]] = {
            n.name: {g.index: g.total_mib for g in n.gpus} for n in self.nodes
        }
        self.replicas_of: dict[tuple[str, str], int] = {}
        for placed in existing:
            book = self.free.get(placed.node)
            if book is None:
                continue
            for index in placed.gpu_indices:
                if index in book:
                    book[index] -= placed.memory_mib
            key = (placed.node, placed.deployment)
            self.replicas_of[key] = self.replicas_of.get(key, 0) + 1
        self._eligible_cache: dict[tuple, list[Node]] = {}

    def eligible(self, selector: Mapping[str, str]) -> list[Node]:
        key = tuple(sorted(selector.items()))
        if key not in self._eligible_cache:
            self._eligible_cache[key] = [
                n
                for n in self.nodes
                if n.schedulable and n.gpus and all(n.labels.get(k) == v for k, v in key)
            ]
        return self._eligible_cache[key]

    def fitting(self, node: Node, request: ReplicaRequest) -> list[tuple[int, int, int]]:
        """(free after placing, gpu index, need) of the GPUs of node the replica fits on."""
        book = self.free[node.name]
        out = []
        for gpu in node.gpus:
            need = request.need_on(gpu)
            left = book[gpu.index] - need
            if left >= 0:
                out.append((left, gpu.index, need))
        return out

    def take(self, node: str, chosen: Sequence[tuple[int, int, int]], deployment: str) -> None:
        book = self.free[node]
        for _left, index, need in chosen:
            book[index] -= need
        key = (node, deployment)
        self.replicas_of[key] = self.replicas_of.get(key, 0) + 1


def _choose(cluster: _Cluster, request: ReplicaRequest, strategy: str, candidates: list[Node]):
    tp = request.tensor_parallel_size
    best = None
    best_key = None
    for node in candidates:
        if len(node.gpus) < tp:
            continue
        fitting = cluster.fitting(node, request)
        if len(fitting) < tp:
            continue
        if strategy == "binpack":
            fitting.sort()  # least left over first, then lowest index
            chosen = fitting[:tp]
            key = (sum(c[0] for c in chosen), node.name)
        else:
            fitting.sort(key=lambda c: (-c[0], c[1]))  # most left over first
            chosen = fitting[:tp]
            node_free = sum(cluster.free[node.name].values())
            key = (
                cluster.replicas_of.get((node.name, request.deployment), 0),
                -node_free,
                node.name,
            )
        if best_key is None or key < best_key:
            best, best_key = (node, chosen), key
    return best


def _refusal(cluster: _Cluster, request: ReplicaRequest, candidates: list[Node]) -> str:
    tp = request.tensor_parallel_size
    if not cluster.nodes:
        return "the pool has no nodes"
    if not any(n.schedulable for n in cluster.nodes):
        return "no node of the pool is ready (all are lost or cordoned)"
    if not candidates:
        return (
            f"no ready node matches the selector {_selector_text(request.selector)}"
            if request.selector
            else "no ready node has a GPU"
        )
    most_gpus = max(len(n.gpus) for n in candidates)
    if most_gpus < tp:
        return (
            f"tensor_parallel_size {tp} needs {tp} GPUs on one node; the largest matching "
            f"node has {most_gpus}"
        )
    biggest = max((g for n in candidates for g in n.gpus), key=lambda g: g.total_mib)
    if request.need_on(biggest) > biggest.total_mib:
        return (
            f"needs {request.need_on(biggest)} MiB per GPU; the largest matching GPU has "
            f"{biggest.total_mib} MiB"
        )
    best_free = 0
    for node in candidates:
        frees = sorted(cluster.free[node.name].values(), reverse=True)
        if len(frees) >= tp:
            best_free = max(best_free, frees[tp - 1])
    need = request.memory_mib if request.memory_fraction is None else None
    need_text = f"{need} MiB" if need is not None else f"{request.memory_fraction:.0%} of a GPU"
    return (
        f"not enough free GPU memory: needs {tp} GPU(s) with {need_text} free each on one "
        f"node; the best matching node has {best_free} MiB free on its "
        f"{'' if tp == 1 else str(tp) + ' '}emptiest GPU{'' if tp == 1 else 's'}"
    )


def place_replicas(
    requests: Iterable[ReplicaRequest],
    nodes: Sequence[Node],
    existing: Iterable[Placed] = (),
    strategy: str = "binpack",
) -> PlacementResult:
    """Assign each request a node and GPUs, or say why it cannot be placed."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    cluster = _Cluster(nodes, existing)
    result = PlacementResult(assignments={}, refusals={})
    for request in sorted(requests, key=_sort_key):
        if request.tensor_parallel_size < 1:
            result.refusals[request.id] = "tensor_parallel_size must be at least 1"
            continue
        if request.memory_fraction is None and not request.memory_mib:
            result.refusals[request.id] = "the replica's memory need is unknown"
            continue
        if request.memory_fraction is not None and not 0 < request.memory_fraction <= 1:
            result.refusals[request.id] = "memory_fraction must be in (0, 1]"
            continue
        candidates = cluster.eligible(request.selector)
        best = _choose(cluster, request, strategy, candidates)
        if best is None:
            result.refusals[request.id] = _refusal(cluster, request, candidates)
            continue
        node, chosen = best
        cluster.take(node.name, chosen, request.deployment)
        indices = tuple(sorted(c[1] for c in chosen))
        result.assignments[request.id] = Assignment(
            node=node.name, gpu_indices=indices, memory_mib=max(c[2] for c in chosen)
        )
    return result
