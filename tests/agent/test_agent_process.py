"""The whole agent as it runs on a host (`python -m workers.agent`), over a real Redis
broker: desired states in through Celery on its own queue, NodeReports out on the fleet
queue, SIGTERM leaving replicas for the next agent to adopt, or stopping them."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.agent.conftest import (
    FAKE_ENGINE,
    NODE,
    REPO,
    desired,
    free_port,
    make_model,
    make_settings,
    make_spec,
    pid_alive,
)
from workers import protocol

NODE_SECRET = "node1-secret-for-tests"


class FleetQueue:
    """Reads NodeReports the way the control plane's Celery worker would receive them;
    every one must carry a valid signature by `secret`."""

    def __init__(self, client: redis.Redis, secret: str = NODE_SECRET):
        self.client = client
        self.secret = secret

    def next_report(
        self, predicate: Callable[[dict], bool] = lambda r: True, timeout: float = 30
    ) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            item = self.client.brpop([protocol.FLEET_QUEUE], timeout=1)
            if item is None:
                continue
            message = json.loads(item[1])
            assert message["headers"]["task"] == protocol.TASK_NODE_REPORT
            body = message["body"]
            if message["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args, kwargs, _embed = json.loads(body)
            assert kwargs == {}
            (report,) = args
            assert report["signed_by"] == report["node"]
            assert protocol.signature_valid(report, self.secret), "badly signed report"
            if predicate(report):
                return report
        raise AssertionError(f"no matching node report within {timeout} s")


def replica_in(report: dict, replica_id: str) -> dict | None:
    return next((r for r in report["replicas"] if r["id"] == replica_id), None)


class AgentProcess:
    def __init__(self, env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in terminate()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workers.agent"],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.log.close()
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def agent_env(tmp_path: Path, broker_url: str) -> dict[str, str]:
    settings = make_settings(tmp_path)
    port = free_port()
    return {
        "PATH": os.environ["PATH"],
        "AGENT_BROKER_URL": broker_url,
        "AGENT_NODE_SECRET": NODE_SECRET,
        "AGENT_NODE_NAME": NODE,
        "AGENT_POOL": "cpu-pool",
        "AGENT_LABELS": "zone=test",
        "AGENT_ADDRESS": "10.1.2.3",
        "AGENT_PORT_RANGE": f"{port}-{port + 5}",
        "AGENT_ENGINE_COMMAND": f"{sys.executable} {FAKE_ENGINE}",
        "AGENT_MODEL_CACHE_DIR": str(settings.model_cache_dir),
        "AGENT_STATE_DIR": str(settings.state_dir),
        "AGENT_HEARTBEAT_SECONDS": "0.5",
        "AGENT_HEALTH_INTERVAL_SECONDS": "0.2",
        "AGENT_DRAIN_GRACE_SECONDS": "0.2",
        "AGENT_LOG_LEVEL": "INFO",
    }


def test_agent_over_redis_applies_reports_and_readopts_after_sigterm(
    tmp_path, broker, control_plane, agent_env
):
    settings = make_settings(tmp_path)
    make_model(settings)
    fleet = FleetQueue(broker)
    port = int(agent_env["AGENT_PORT_RANGE"].split("-")[0])
    spec = make_spec(port=port)
    agents: list[AgentProcess] = []
    try:
        agents.append(AgentProcess(agent_env, tmp_path / "agent-1.log"))
        first = fleet.next_report(timeout=60)  # the report sent on start
        assert first["protocol"] == protocol.PROTOCOL_VERSION
        assert first["node"] == NODE and first["pool"] == "cpu-pool"
        assert first["address"] == "10.1.2.3" and first["labels"] == {"zone": "test"}
        assert first["inventory"]["kind"] == "cpu"
        assert first["inventory"]["gpus"][0]["name"] == "cpu"
        assert first["replicas"] == [] and first["generation_applied"] == -1
        assert first["sent_at"] == pytest.approx(time.time(), abs=60)

        # What the reconciler does: the whole desired state on the agent's own queue.
        control_plane.send_task(
            protocol.TASK_APPLY_DESIRED_STATE,
            args=[desired(4, spec)],
            queue=protocol.agent_queue(NODE),
        )
        ready = fleet.next_report(
            lambda r: (x := replica_in(r, spec["id"])) is not None and x["state"] == "ready"
        )
        assert ready["generation_applied"] == 4
        replica = replica_in(ready, spec["id"])
        assert replica["spec_hash"] == spec["spec_hash"] and replica["port"] == port
        pid = replica["pid"]
        assert pid_alive(pid)

        # Heartbeats keep coming with load; a stale generation is ignored.
        control_plane.send_task(
            protocol.TASK_APPLY_DESIRED_STATE,
            args=[desired(3)],
            queue=protocol.agent_queue(NODE),
        )
        loaded = fleet.next_report(
            lambda r: "num_requests_running" in (replica_in(r, spec["id"]) or {}).get("load", {})
        )
        time.sleep(1)
        later = fleet.next_report()
        assert later["generation_applied"] == 4
        assert replica_in(later, spec["id"])["state"] == "ready"
        assert loaded["sent_at"] < later["sent_at"]

        # SIGTERM: the agent exits cleanly and, by default, leaves the replica running.
        assert agents[0].terminate() == 0
        assert pid_alive(pid)

        # The next agent adopts it: same pid, ready in its very first report.
        broker.delete(protocol.FLEET_QUEUE)
        agents.append(AgentProcess(agent_env, tmp_path / "agent-2.log"))
        adopted = fleet.next_report(timeout=60)
        replica = replica_in(adopted, spec["id"])
        assert replica is not None and replica["pid"] == pid and replica["state"] == "ready"
        assert adopted["generation_applied"] == 4

        # Stopped with AGENT_STOP_REPLICAS_ON_EXIT=1, an agent drains and stops them.
        assert agents[1].terminate() == 0
        agents.append(
            AgentProcess({**agent_env, "AGENT_STOP_REPLICAS_ON_EXIT": "1"}, tmp_path / "a3.log")
        )
        broker.delete(protocol.FLEET_QUEUE)
        fleet.next_report(lambda r: replica_in(r, spec["id"]) is not None, timeout=60)
        assert agents[2].terminate() == 0
        assert not pid_alive(pid)
        assert "replicas are drained and stopped" in agents[2].output()
        assert "Traceback" not in agents[0].output() + agents[1].output()
    finally:
        for agent in agents:
            if agent.process.poll() is None:
                agent.process.kill()
                agent.process.wait()
        for entry in (settings.state_dir / "state.json",):
            if entry.exists():
                for replica in json.loads(entry.read_text())["replicas"].values():
                    if pid_alive(replica["pid"]):
                        os.killpg(replica["pid"], signal.SIGKILL)


def test_desired_state_for_another_node_is_rejected(tmp_path, broker, control_plane, agent_env):
    agent = AgentProcess(agent_env, tmp_path / "agent.log")
    try:
        fleet = FleetQueue(broker)
        fleet.next_report(timeout=60)
        message = desired(1, make_spec(), node="someone-else")
        control_plane.send_task(
            protocol.TASK_APPLY_DESIRED_STATE, args=[message], queue=protocol.agent_queue(NODE)
        )
        deadline = time.monotonic() + 30
        while "rejected a desired state" not in agent.output():
            assert time.monotonic() < deadline, agent.output()
            time.sleep(0.1)
        assert "not this one" in agent.output()
        report = fleet.next_report()
        assert report["replicas"] == [] and report["generation_applied"] == -1
    finally:
        assert agent.terminate() == 0


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler of its own for SIGTERM (``SigCgt`` in
    ``/proc/<pid>/status``)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@pytest.mark.parametrize("delay", [0.0, 0.4, 1.3])
def test_sigterm_during_startup_stops_cleanly(tmp_path, broker, agent_env, delay):
    """A SIGTERM at points of the start-up after the agent's first statement (which
    installs its handler; before it, the interpreter is still loading and the signal's
    default action applies, as for any program)."""
    agent = AgentProcess(agent_env, tmp_path / "agent.log")
    deadline = time.monotonic() + 60
    while not catches_sigterm(agent.process.pid):
        assert time.monotonic() < deadline, "the agent never installed its SIGTERM handler"
        time.sleep(0.005)
    # The handler comes first of all: nothing of the start-up has been logged yet.
    assert ") starting:" not in agent.output(), "SIGTERM is caught only once start-up ran"
    time.sleep(delay)
    assert agent.terminate(timeout=60) == 0, agent.output()


def test_removed_replica_is_reported_draining_then_stopped_then_left_out(
    tmp_path, broker, control_plane, agent_env
):
    settings = make_settings(tmp_path)
    make_model(settings)
    fleet = FleetQueue(broker)
    spec = make_spec(port=int(agent_env["AGENT_PORT_RANGE"].split("-")[0]))
    agent = AgentProcess(agent_env, tmp_path / "agent.log")
    try:
        send = lambda state: control_plane.send_task(  # noqa: E731
            protocol.TASK_APPLY_DESIRED_STATE, args=[state], queue=protocol.agent_queue(NODE)
        )
        send(desired(1, spec))
        ready = fleet.next_report(
            lambda r: (replica_in(r, spec["id"]) or {}).get("state") == "ready"
        )
        pid = replica_in(ready, spec["id"])["pid"]
        send(desired(2))
        seen = []
        deadline = time.monotonic() + 60
        while "absent" not in seen:
            assert time.monotonic() < deadline, seen
            report = fleet.next_report()
            if report["generation_applied"] != 2:
                continue
            replica = replica_in(report, spec["id"])
            state = replica["state"] if replica else "absent"
            if not seen or seen[-1] != state:
                seen.append(state)
        assert seen[-3:] == ["draining", "stopped", "absent"], seen
        assert not pid_alive(pid)
    finally:
        assert agent.terminate() == 0
