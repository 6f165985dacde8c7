"""The node agent's own endpoint (AGENT_HTTP_PORT): /healthz as a liveness probe and
/metrics with the replicas' load, served by the real agent process."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.conftest import (
    CPU_INVENTORY,
    NODE,
    desired,
    make_model,
    make_settings,
    make_spec,
    pid_alive,
    wait_for,
)
from tests.agent.test_agent_process import AgentProcess, FleetQueue, agent_env, replica_in
from workers import protocol
from workers.agent.http import AgentStatus
from workers.agent.settings import AgentSettings, SettingsError

__all__ = ["agent_env"]  # the fixture, shared with the agent process tests


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_agent_serves_health_and_replica_metrics(tmp_path, broker, control_plane, agent_env):
    from tests.support.vllm import free_port

    http_port = free_port()
    env = {**agent_env, "AGENT_HTTP_PORT": str(http_port), "AGENT_STOP_REPLICAS_ON_EXIT": "1"}
    settings = make_settings(tmp_path)
    make_model(settings)
    port = int(agent_env["AGENT_PORT_RANGE"].split("-")[0])
    spec = make_spec(port=port)
    fleet = FleetQueue(broker)
    agent = AgentProcess(env, tmp_path / "agent.log")
    base = f"http://127.0.0.1:{http_port}"
    pid = None
    try:
        fleet.next_report(timeout=60)
        _status, body = wait_for(
            lambda: (r := get(base + "/healthz"))[0] == 200 and r, 60, "agent /healthz"
        )
        assert json.loads(body)["checks"] == {"loop": "ok", "report": "ok"}
        control_plane.send_task(
            protocol.TASK_APPLY_DESIRED_STATE,
            args=[desired(1, spec)],
            queue=protocol.agent_queue(NODE),
        )
        report = fleet.next_report(
            lambda r: "kv_cache_usage_perc" in (replica_in(r, spec["id"]) or {}).get("load", {})
        )
        pid = replica_in(report, spec["id"])["pid"]

        def loaded():
            code, text = get(base + "/metrics")
            found = samples(text.decode())
            key = ("agent_replica_kv_cache_usage_ratio", (("node", NODE), ("replica", spec["id"])))
            return found if code == 200 and key in found else None

        found = wait_for(loaded, 30, "replica load in the agent's /metrics")
        assert found[("agent_replicas", (("node", NODE), ("state", "ready")))] == 1
        assert found[("agent_replicas", (("node", NODE), ("state", "failed")))] == 0
        labels = (("node", NODE), ("replica", spec["id"]))
        assert found[("agent_replica_kv_cache_usage_ratio", labels)] == 0.25
        assert found[("agent_replica_requests_waiting", labels)] == 0
        assert ("agent_replica_requests_running", labels) in found
        assert found[("agent_report_age_seconds", (("node", NODE),))] >= 0
        assert get(base + "/nothing")[0] == 404
        assert agent.terminate() == 0
        assert get(base + "/healthz")[0] == 0  # the endpoint goes with the agent
    finally:
        if agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait()
        if pid and pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)


def _report(state: str = "ready") -> dict:
    return {
        "node": NODE,
        "inventory": {
            **CPU_INVENTORY,
            "kind": "gpu",
            "gpus": [
                {
                    "index": 0,
                    "uuid": "GPU-1",
                    "name": "H100",
                    "memory_total_mib": 81920,
                    "memory_free_mib": 1024,
                }
            ],
        },
        "replicas": [{"id": "r1", "state": state, "load": {"num_requests_running": 3.0}}],
    }


def test_health_fails_when_the_loop_hangs_or_reports_stop():
    now = time.monotonic()
    state = {"alive": True, "sent_at": now}
    status = AgentStatus(
        node=NODE,
        heartbeat_seconds=10,
        loop_alive=lambda: state["alive"],
        last_report=lambda: (_report(), state["sent_at"]),
    )
    assert status.health() == (True, {"loop": "ok", "report": "ok"})
    state["sent_at"] = now - 29  # within three heartbeats
    assert status.health()[0] is True
    state["sent_at"] = now - 31
    healthy, checks = status.health()
    assert not healthy and "30 s" in checks["report"]
    state["sent_at"] = None
    assert status.health() == (False, {"loop": "ok", "report": "no report sent yet"})
    state.update(alive=False, sent_at=now)
    healthy, checks = status.health()
    assert not healthy and checks["loop"] != "ok"


def test_gpu_memory_is_exported_in_bytes():
    status = AgentStatus(
        node=NODE,
        heartbeat_seconds=10,
        loop_alive=lambda: True,
        last_report=lambda: (_report(), time.monotonic()),
    )
    names = {}
    for family in status.collect():
        for sample in family.samples:
            names[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    gpu = (("gpu", "0"), ("node", NODE), ("uuid", "GPU-1"))
    assert names[("agent_gpu_memory_free_bytes", gpu)] == 1024 * 1024 * 1024
    assert names[("agent_gpu_memory_total_bytes", gpu)] == 81920 * 1024 * 1024
    assert names[("agent_replica_requests_running", (("node", NODE), ("replica", "r1")))] == 3


@pytest.mark.parametrize(
    ("value", "problem"),
    [("20005", "inside AGENT_PORT_RANGE"), ("http", "AGENT_HTTP_PORT"), ("70000", "65535")],
)
def test_bad_http_port_is_refused(tmp_path, value, problem):
    env = {
        "AGENT_BROKER_URL": "redis://127.0.0.1:6379/9",
        "AGENT_NODE_SECRET": "s",
        "AGENT_ENGINE_COMMAND": "true",
        "AGENT_STATE_DIR": str(tmp_path / "state"),
        "AGENT_PORT_RANGE": "20000-29999",
        "AGENT_HTTP_PORT": value,
    }
    with pytest.raises(SettingsError) as caught:
        AgentSettings.from_env(env)
    assert problem in str(caught.value)
    env["AGENT_HTTP_PORT"] = "9300"
    assert AgentSettings.from_env(env).http_port == 9300
