"""Compare the gateway's routing policies on real vLLM CPU replicas.

Starts (all on 127.0.0.1, all stopped at the end):

* N real vLLM servers (default 2) of the tiny chat model, prefix caching on (vLLM's
  default), each pinned to its own cores when there are enough;
* a private redis-server;
* the real gateway (``python -m gateway``), one per policy (``GATEWAY_ROUTING``:
  ``least-outstanding``, ``affinity`` and ``cache-aware``, the default), the policies'
  runs interleaved for each workload (``--rounds``, alternating order);

then runs three workloads through the gateway with the official ``openai`` client,
streaming, at a fixed concurrency:

* (a) ``sessions``: multi-turn sessions, each with its own long system prompt;
* (b) ``hot``: one hot shared prefix plus a unique tail per request;
* (c) ``unique``: no shared prefixes.

For each policy x workload it prints the prefix-cache hit ratio (the replicas' own
``vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total``, deltas over the run),
TTFT p50/p95 through the gateway and each replica's share of the requests. Workload (a)
also runs once on a single replica (the best case the hit ratio is compared to). Every
run uses fresh random prompts, because the replicas' caches stay warm across runs.

    .venv/bin/python bench/routing.py [--replicas 2] [--concurrency 4] [--rounds 2]
        [--sessions 8] [--turns 4] [--requests 32] [--max-tokens 4]

Needs the engine (deploy/install-engine.sh) and Debian's ``redis-server``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import PEPPER, free_port, publish_snapshot, start_redis, wait_port  # noqa: E402

from tests.support.vllm import running_vllm  # noqa: E402
from tests.support.vllm_fixtures import _tiny_chat_cache_dir  # noqa: E402
from workers.engine import paths  # noqa: E402

POLICIES = ("least-outstanding", "affinity", "cache-aware")
WORKLOADS = ("sessions", "hot", "unique")
WORDS = [
    "ledger",
    "invoice",
    "contract",
    "clause",
    "audit",
    "policy",
    "tariff",
    "customs",
    "freight",
    "reserve",
    "asset",
    "payroll",
    "pension",
    "escrow",
    "margin",
    "liability",
    "dividend",
    "treasury",
    "bond",
    "yield",
    "hedge",
]


def words(seed: str, count: int) -> str:
    """Filler text, different for every seed (so no shared prefix by accident)."""
    rng = random.Random(seed)  # noqa: S311 - filler text, not secrets
    return " ".join(rng.choice(WORDS) for _ in range(count))


def metric_sums(root_url: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    text = httpx.get(root_url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        with contextlib.suppress(ValueError):
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return sums


HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
REQUESTS = "vllm:request_success_total"


def publish(redis_url: str, replicas: list, *, version: int) -> str:
    routes = [
        {
            "id": f"replica-{i}",
            "url": server.root_url,
            "api_key": server.api_key,
            "model": server.served_model_name,
            "external": False,
        }
        for i, server in enumerate(replicas)
    ]
    model = {"task": "chat", "openness": "open-weights", "context_length": 2048}
    return publish_snapshot(
        redis_url,
        {"pool": {**model, "routes": routes}, "solo": {**model, "routes": routes[:1]}},
        version=version,
    )


def start_gateway(tmp: Path, redis_url: str, policy: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "API_KEY_PEPPER": PEPPER,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_ROUTING": policy,
        # This compares routing, not Redis fault handling: a machine busy with the
        # replicas must not turn slow admissions into 503s (fail-closed after 0.5 s).
        "GATEWAY_REDIS_TIMEOUT": "2",
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_ACCESS_LOG": "false",
        "PYTHONPATH": str(REPO),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp / f"gateway-{policy}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


def requests_for(workload: str, args: argparse.Namespace, nonce: str) -> list[list[list[dict]]]:
    """Work as lists of conversations; each conversation is a list of message lists
    sent one after another (a session's turns); conversations run concurrently."""
    if workload == "sessions":
        convs = []
        for s in range(args.sessions):
            system = f"[{nonce}-{s}] " + words(f"{nonce}s{s}", args.prefix_words)
            turns, history = [], [{"role": "system", "content": system}]
            for t in range(args.turns):
                history = [
                    *history,
                    {"role": "user", "content": f"Turn {t}: " + words(f"{nonce}{s}q{t}", 12)},
                ]
                turns.append(list(history))
                history = [*history, {"role": "assistant", "content": "Noted."}]
            convs.append(turns)
        return convs
    if workload == "hot":
        hot = f"[{nonce}] " + words(f"{nonce}hot", args.prefix_words)
        return [
            [
                [
                    {"role": "system", "content": hot},
                    {"role": "user", "content": words(f"{nonce}u{i}", 40)},
                ]
            ]
            for i in range(args.requests)
        ]
    return [
        [
            [
                {
                    "role": "user",
                    "content": f"[{nonce}-{i}] " + words(f"{nonce}x{i}", args.prefix_words),
                }
            ]
        ]
        for i in range(args.requests)
    ]


def run_workload(gw_url: str, key: str, model: str, convs, args) -> list[float]:
    client = openai.OpenAI(base_url=gw_url + "/v1", api_key=key, max_retries=0, timeout=300)
    ttfts: list[float] = []

    def conversation(turns):
        out = []
        for messages in turns:
            started = time.perf_counter()
            stream = client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=args.max_tokens,
                temperature=0,
                stream=True,
            )
            first = None
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - started
            out.append(first if first is not None else time.perf_counter() - started)
        return out

    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        for result in pool.map(conversation, convs):
            ttfts.extend(result)
    return ttfts


def measure(replicas, gw_url, key, model, workload, args) -> dict:
    """One run of ``workload``: raw counts (deltas of the replicas' metrics) and TTFTs."""
    before = [metric_sums(r.root_url) for r in replicas]
    ttfts = run_workload(
        gw_url, key, model, requests_for(workload, args, secrets.token_hex(4)), args
    )
    time.sleep(1.0)  # let the last requests' counters land
    after = [metric_sums(r.root_url) for r in replicas]
    pairs = list(zip(after, before, strict=True))
    return {
        "hits": sum(a.get(HITS, 0) - b.get(HITS, 0) for a, b in pairs),
        "queries": sum(a.get(QUERIES, 0) - b.get(QUERIES, 0) for a, b in pairs),
        "served": [a.get(REQUESTS, 0) - b.get(REQUESTS, 0) for a, b in pairs],
        "ttfts": ttfts,
    }


def summarize(runs: list[dict]) -> dict:
    hits = sum(r["hits"] for r in runs)
    queries = sum(r["queries"] for r in runs)
    served = [sum(col) for col in zip(*(r["served"] for r in runs), strict=True)]
    total = sum(served) or 1
    ttfts = sorted(t for r in runs for t in r["ttfts"])
    return {
        "hit_ratio": hits / queries if queries else 0.0,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p95": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
        "shares": [s / total for s in served],
        "requests": len(ttfts),
    }


def row(label: str, r: dict) -> str:
    shares = " ".join(f"{s:5.2f}" for s in r["shares"])
    return (
        f"{label:<28} {r['hit_ratio']:6.3f} {r['ttft_p50'] * 1000:9.0f} "
        f"{r['ttft_p95'] * 1000:9.0f}   {shares}   (n={r['requests']})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prefix-words", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved runs per policy and workload"
    )
    parser.add_argument("--model-dir", type=Path, default=None)
    args = parser.parse_args()

    engine_python = paths.engine_python_path()
    if not engine_python.exists():
        sys.exit(f"{engine_python} is missing: run deploy/install-engine.sh")
    model_dir = args.model_dir or _tiny_chat_cache_dir(0)
    if not (model_dir / "model.safetensors").is_file():
        subprocess.run(
            [str(engine_python), "-m", "workers.engine.tinymodel", str(model_dir), "--seed", "0"],
            cwd=REPO,
            check=True,
        )
    tmp = Path(tempfile.mkdtemp(prefix="routing-bench-"))
    cores = os.cpu_count() or 1
    results: dict[tuple[str, str], dict] = {}
    with contextlib.ExitStack() as stack:
        redis_url, redis_proc, _embedded = start_redis(tmp)
        if redis_proc:
            stack.callback(redis_proc.kill)
        replicas = []
        for i in range(args.replicas):
            pin = str(i % cores) if cores >= args.replicas else None
            replicas.append(
                stack.enter_context(
                    running_vllm(
                        engine_python,
                        model_dir,
                        served_model_name="tiny-chat",
                        task="generate",
                        max_model_len=2048,
                        enforce_eager=True,
                        cpu_cores=pin,
                        log_path=tmp / f"vllm-{i}.log",
                    )
                )
            )
        print(f"{args.replicas} replicas ready; logs in {tmp}", flush=True)
        key = publish(redis_url, replicas, version=1)
        # One gateway per policy, all running, and the policies interleaved (in
        # alternating order) for each workload, so a machine that gets busier or
        # quieter during the run does not favour whichever policy ran first.
        gateways: dict[str, tuple[subprocess.Popen, str]] = {}
        try:
            for policy in POLICIES:
                gateways[policy] = start_gateway(tmp, redis_url, policy)
            time.sleep(1.0)  # the gateways load the snapshot at start-up
            first_url = gateways[POLICIES[0]][1]
            run_workload(first_url, key, "pool", requests_for("unique", args, "warm")[:4], args)
            results[("single replica", "sessions")] = summarize(
                [measure(replicas, first_url, key, "solo", "sessions", args)]
            )
            print(row("single replica / sessions", results[("single replica", "sessions")]))
            for workload in WORKLOADS:
                runs: dict[str, list[dict]] = {policy: [] for policy in POLICIES}
                for round_ in range(args.rounds):
                    order = POLICIES if round_ % 2 == 0 else tuple(reversed(POLICIES))
                    for policy in order:
                        runs[policy].append(
                            measure(replicas, gateways[policy][1], key, "pool", workload, args)
                        )
                for policy in POLICIES:
                    results[(policy, workload)] = summarize(runs[policy])
                    print(row(f"{policy} / {workload}", results[(policy, workload)]), flush=True)
        finally:
            for proc, _ in gateways.values():
                proc.terminate()
                proc.wait(timeout=30)

    print()
    print(f"{'policy / workload':<28} {'hit':>6} {'TTFT p50':>9} {'TTFT p95':>9}   replica shares")
    for (policy, workload), r in results.items():
        print(row(f"{policy} / {workload}", r))
    best = results[("single replica", "sessions")]["hit_ratio"]
    default = "cache-aware"
    a = results[(default, "sessions")]["hit_ratio"]
    b = max(results[(default, "hot")]["shares"]) * args.replicas
    c = (
        results[(default, "unique")]["ttft_p50"]
        / results[("least-outstanding", "unique")]["ttft_p50"]
    )
    print()
    print(f"(a) default hit ratio / single replica: {a / best if best else 0:.3f} (target >= 0.95)")
    print(f"(b) default busiest share / mean share: {b:.2f} (target <= 1.5)")
    print(f"(c) default TTFT p50 / least-outstanding: {c:.3f} (target <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
