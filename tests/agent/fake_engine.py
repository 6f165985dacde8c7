"""A stand-in for a vLLM OpenAI server, for the node agent's fast tests.

Takes vLLM's command line (only --model, --host, --port, --api-key or VLLM_API_KEY, and
--served-model-name matter; the rest is ignored) and serves:

- GET  /health                 200 once "healthy", 503 before (or after "unhealthy_after")
- GET  /metrics                vLLM's load series in Prometheus text format
- POST /v1/chat/completions    needs `Authorization: Bearer <api key>`; a body field
                               "fake_hold_seconds" holds the request that long (or until
                               POST /fake/release), counted in vllm:num_requests_running
- POST /fake/release           releases every held request
- POST /fake/crash             exits at once (exit_code)

Its behaviour comes from `<model dir>/fake_engine.json`, read at every start:
    healthy_after: s          answer /health 503 for this long after starting
    crash_after: s            exit with exit_code this long after starting
    crash_times: n            ... only for the first n starts (counted in the model dir)
    exit_code: n              default 3
    ignore_sigterm: bool      stay up on SIGTERM (the agent must SIGKILL it)
    spawn_child: bool         leave a child in the process group (like vLLM's engine core)
    unhealthy_after: s        /health turns 503 this long after starting
Each start appends its argv, pid and a few env variables to `<model dir>/launches.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STARTED = time.monotonic()
RELEASE = threading.Event()
LOCK = threading.Lock()
COUNTERS = {"running": 0, "prompt_tokens": 0, "generation_tokens": 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    # Like vLLM: the key comes from --api-key or, as the agent passes it, VLLM_API_KEY.
    parser.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"))
    parser.add_argument("--served-model-name", default="fake")
    args, _unknown = parser.parse_known_args()
    if not args.api_key:
        parser.error("no API key: pass --api-key or set VLLM_API_KEY")
    model_dir = Path(args.model)
    config_path = model_dir / "fake_engine.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    starts = _count_start(model_dir)
    with open(model_dir / "launches.jsonl", "a") as launches:
        env_names = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "HF_HUB_OFFLINE", "VLLM_API_KEY")
        entry = {
            "argv": sys.argv,
            "pid": os.getpid(),
            "pgid": os.getpgid(0),
            "env": {name: os.environ.get(name) for name in env_names},
            "start": starts,
            "time": time.time(),
        }
        launches.write(json.dumps(entry) + "\n")

    if config.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, lambda *_: print("fake engine: ignoring SIGTERM", flush=True))
    else:
        signal.signal(signal.SIGTERM, lambda *_: _exit(0, "fake engine: SIGTERM, stopping"))
    if config.get("spawn_child"):
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])

    crash_after = config.get("crash_after")
    if crash_after is not None and starts <= config.get("crash_times", 10**9):
        code = int(config.get("exit_code", 3))
        timer = threading.Timer(
            crash_after, _exit, args=(code, f"RuntimeError: fake engine crashed (start {starts})")
        )
        timer.daemon = True
        timer.start()

    handler = _handler(args, config)
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    print(f"fake engine serving {args.served_model_name} on port {args.port}", flush=True)
    server.serve_forever()


def _count_start(model_dir: Path) -> int:
    counter = model_dir / ".fake_starts"
    starts = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(starts))
    return starts


def _exit(code: int, message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    os._exit(code)


def _handler(args: argparse.Namespace, config: dict) -> type[BaseHTTPRequestHandler]:
    healthy_after = float(config.get("healthy_after", 0))
    unhealthy_after = config.get("unhealthy_after")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *log_args):  # quiet
            pass

        def _send(self, status: int, body: bytes, content_type="application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                uptime = time.monotonic() - STARTED
                healthy = uptime >= healthy_after and (
                    unhealthy_after is None or uptime < float(unhealthy_after)
                )
                self._send(200 if healthy else 503, b"")
            elif self.path == "/metrics":
                self._send(200, _metrics(args.served_model_name).encode(), "text/plain")
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/fake/release":
                RELEASE.set()
                self._send(200, b"{}")
            elif self.path == "/fake/crash":
                _exit(int(config.get("exit_code", 3)), "fake engine: crash requested")
            elif self.path == "/v1/chat/completions":
                if self.headers.get("Authorization") != f"Bearer {args.api_key}":
                    self._send(401, b'{"error": "Unauthorized"}')
                    return
                self._chat(body)
            else:
                self._send(404, b'{"error": "not found"}')

        def _chat(self, body: dict) -> None:
            with LOCK:
                COUNTERS["running"] += 1
                COUNTERS["prompt_tokens"] += 5
            try:
                hold = float(body.get("fake_hold_seconds", 0))
                if hold:
                    RELEASE.wait(hold)
                answer = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "model": args.served_model_name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "ok"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                }
            finally:
                with LOCK:
                    COUNTERS["running"] -= 1
                    COUNTERS["generation_tokens"] += 1
            self._send(200, json.dumps(answer).encode())

    return Handler


def _metrics(model_name: str) -> str:
    with LOCK:
        running = COUNTERS["running"]
        prompt = COUNTERS["prompt_tokens"]
        generation = COUNTERS["generation_tokens"]
    labels = f'engine="0",model_name="{model_name}"'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{labels}}} {float(running)}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{{{labels}}} 0.0\n"
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f"vllm:kv_cache_usage_perc{{{labels}}} 0.25\n"
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
        "# TYPE vllm:prompt_tokens_total counter\n"
        f"vllm:prompt_tokens_total{{{labels}}} {float(prompt)}\n"
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
        "# TYPE vllm:generation_tokens_total counter\n"
        f"vllm:generation_tokens_total{{{labels}}} {float(generation)}\n"
    )


if __name__ == "__main__":
    main()
