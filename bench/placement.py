"""Benchmark the placement function: 1,000 replicas on 500 nodes x 8 GPUs.

    .venv/bin/python bench/placement.py [--replicas 1000] [--nodes 500] [--seed 1]

A realistic mix (7B-70B models, bf16 and quantized, tensor-parallel 1/2/4/8, some
replicas asking for a fraction of a GPU) is placed with both strategies. Prints the time,
how many replicas were placed, how many GPUs hold something, and a lower bound on the
GPUs any placement needs: the larger of (total memory needed / GPU size) and the GPUs
of the tensor-parallel groups that cannot share a GPU (a group member needing more than
half a GPU takes the GPU alone).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from controlplane.fleet.placement import (
    Gpu,
    Node,
    ReplicaRequest,
    estimate_memory_mib,
    place_replicas,
)

GPU_MIB = 80 * 1024
MODELS = [  # (parameters, dtype, quantization, max_model_len, tp)
    (7_000_000_000, "bfloat16", "none", 4096, 1),
    (8_000_000_000, "bfloat16", "none", 8192, 1),
    (13_000_000_000, "float16", "none", 4096, 1),
    (34_000_000_000, "bfloat16", "awq", 8192, 1),
    (70_000_000_000, "bfloat16", "none", 8192, 4),
    (70_000_000_000, "bfloat16", "fp8", 8192, 2),
    (405_000_000_000, "bfloat16", "fp8", 8192, 8),
    (1_500_000_000, "bfloat16", "none", 2048, 1),
]


def make_requests(count: int, rng: random.Random) -> list[ReplicaRequest]:
    requests = []
    for i in range(count):
        params, dtype, quant, ctx, tp = rng.choice(MODELS)
        if rng.random() < 0.1:
            requests.append(
                ReplicaRequest(
                    id=f"r{i:05}",
                    deployment=f"d{i % 97}",
                    tensor_parallel_size=1,
                    memory_fraction=rng.choice([0.25, 0.5, 0.9]),
                )
            )
            continue
        mem = estimate_memory_mib(
            parameter_count=params,
            dtype=dtype,
            quantization=quant,
            max_model_len=ctx,
            tensor_parallel_size=tp,
        )
        requests.append(
            ReplicaRequest(
                id=f"r{i:05}", deployment=f"d{i % 97}", tensor_parallel_size=tp, memory_mib=mem
            )
        )
    return requests


def lower_bound(requests: list[ReplicaRequest]) -> int:
    total = 0
    exclusive = 0
    for r in requests:
        need = r.need_on(Gpu(0, GPU_MIB))
        total += need * r.tensor_parallel_size
        if need > GPU_MIB // 2:
            exclusive += r.tensor_parallel_size
    return max(math.ceil(total / GPU_MIB), exclusive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)  # noqa: S311 (a benchmark, not a secret)
    nodes = [
        Node(name=f"node-{i:04}", gpus=tuple(Gpu(g, GPU_MIB) for g in range(args.gpus)))
        for i in range(args.nodes)
    ]
    requests = make_requests(args.replicas, rng)
    bound = lower_bound(requests)
    print(
        f"{len(requests)} replicas ({sum(r.tensor_parallel_size for r in requests)} GPU slots) "
        f"on {args.nodes} nodes x {args.gpus} GPUs of {GPU_MIB} MiB; lower bound {bound} GPUs"
    )
    for strategy in ("binpack", "spread"):
        start = time.perf_counter()
        result = place_replicas(requests, nodes, (), strategy)
        elapsed = time.perf_counter() - start
        used = {(a.node, g) for a in result.assignments.values() for g in a.gpu_indices}
        nodes_used = {a.node for a in result.assignments.values()}
        print(
            f"{strategy:8} {elapsed * 1000:8.0f} ms  placed {len(result.assignments)}"
            f"/{len(requests)}  GPUs used {len(used)} ({len(used) / bound:.3f} x lower bound)"
            f"  nodes used {len(nodes_used)}"
        )
        for reason in sorted(set(result.refusals.values()))[:3]:
            print(f"         refused: {reason}")


if __name__ == "__main__":
    main()
