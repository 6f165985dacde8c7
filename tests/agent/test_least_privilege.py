"""Least privilege on a node: the agent's Redis ACL user reaches its own queue and the
fleet queue (push only), nothing else, and still runs the agent's whole cycle; the
engines it starts inherit no broker URL and no secret."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.agent.conftest import FAKE_ENGINE, desired, free_port, make_model, make_settings
from tests.agent.conftest import make_spec as base_spec
from tests.agent.test_agent_process import AgentProcess, FleetQueue, replica_in
from workers import protocol
from workers.agent import broker_acl

NODE_SECRET = "least-privilege-node-secret"


@pytest.fixture
def admin(broker_url: str) -> Iterator[redis.Redis]:
    if not broker_url.startswith("redis://"):
        pytest.skip("needs a Redis server reachable over TCP with ACLs (Redis >= 7)")
    client = redis.Redis.from_url(broker_url)
    version = client.info("server")["redis_version"]
    if int(version.split(".")[0]) < 7:
        pytest.skip(f"Redis {version} has no ACL selectors")
    yield client
    client.close()


@pytest.fixture
def acl_node(admin: redis.Redis, broker_url: str) -> Iterator[tuple[str, str]]:
    """A node name of this test only, its ACL user and the broker URL of that user."""
    node = f"lp-{uuid.uuid4().hex[:10]}"
    username, password = broker_acl.ensure_agent_user(admin, node)
    yield node, broker_acl.agent_broker_url(broker_url, username, password)
    broker_acl.delete_agent_user(admin, node)
    queue = protocol.agent_queue(node)
    admin.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    admin.delete(protocol.FLEET_QUEUE)


def denied(call) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_agent_user_reaches_its_own_queue_only(admin, acl_node):
    node, url = acl_node
    admin.set("sap:snapshot", '{"keys": "of every organization"}')
    admin.set("sap:lim:rpm:key-1", 3)
    admin.lpush("agent.someone-else", "a desired state with replica keys")
    admin.hset("unacked", "tag", "another node's desired state")
    agent = redis.Redis.from_url(url)
    try:
        assert agent.ping()
        assert denied(lambda: agent.get("sap:snapshot"))
        assert denied(lambda: agent.get("sap:lim:rpm:key-1"))
        assert denied(lambda: agent.set("sap:snapshot", "{}"))
        assert denied(lambda: agent.lrange("agent.someone-else", 0, -1))
        assert denied(lambda: agent.brpop(["agent.someone-else"], timeout=0.1))
        assert denied(lambda: agent.brpop([protocol.agent_queue(node) + "0"], timeout=0.1))
        assert denied(lambda: agent.lrange(protocol.FLEET_QUEUE, 0, -1))
        assert denied(lambda: agent.brpop([protocol.FLEET_QUEUE], timeout=0.1))
        assert denied(lambda: agent.hgetall("unacked"))
        assert denied(lambda: agent.keys("*"))
        assert denied(lambda: agent.publish("sap:snapshot:changed", "1"))
        # what it needs
        agent.lpush(protocol.FLEET_QUEUE, "a report")
        agent.lpush(protocol.agent_queue(node), "x")
        assert agent.brpop([protocol.agent_queue(node)], timeout=1)[1] == b"x"
    finally:
        agent.close()
        admin.delete("sap:snapshot", "sap:lim:rpm:key-1", "agent.someone-else", "unacked")


def test_agent_runs_with_its_user_and_engines_get_no_secrets(
    tmp_path: Path, admin, acl_node, control_plane
):
    node, url = acl_node
    settings = make_settings(tmp_path)
    make_model(settings)
    port = free_port()
    spec = base_spec(port=port)
    admin.execute_command("ACL", "LOG", "RESET")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AGENT_BROKER_URL": url,
        "AGENT_NODE_SECRET": NODE_SECRET,
        "AGENT_NODE_NAME": node,
        "AGENT_POOL": "cpu-pool",
        "AGENT_PORT_RANGE": f"{port}-{port}",
        "AGENT_ENGINE_COMMAND": f"{sys.executable} {FAKE_ENGINE}",
        "AGENT_MODEL_CACHE_DIR": str(settings.model_cache_dir),
        "AGENT_STATE_DIR": str(settings.state_dir),
        "AGENT_HEARTBEAT_SECONDS": "0.5",
        "AGENT_HEALTH_INTERVAL_SECONDS": "0.2",
        "AGENT_DRAIN_GRACE_SECONDS": "0.2",
        "AGENT_STOP_REPLICAS_ON_EXIT": "1",
        # what a careless launcher might leave in the agent's environment
        "REDIS_URL": "redis://:leaked-admin-password@127.0.0.1:6379/0",
        "DATABASE_URL": "postgres://sap:leaked-db-password@db/sap",
        "SECRET_KEY": "leaked-django-secret",
        "HF_TOKEN": "hf_leakedtoken",
    }
    fleet = FleetQueue(admin, secret=NODE_SECRET)
    agent = AgentProcess(env, tmp_path / "agent.log")
    pid = None
    try:
        fleet.next_report(lambda r: r["node"] == node, timeout=60)
        control_plane.send_task(
            protocol.TASK_APPLY_DESIRED_STATE,
            args=[desired(1, spec, node=node)],
            queue=protocol.agent_queue(node),
        )
        ready = fleet.next_report(
            lambda r: (replica_in(r, spec["id"]) or {}).get("state") == "ready"
        )
        assert ready["generation_applied"] == 1
        pid = replica_in(ready, spec["id"])["pid"]
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        engine_env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
        assert engine_env["VLLM_API_KEY"] == spec["api_key"]
        for name in ("AGENT_BROKER_URL", "AGENT_NODE_SECRET", "REDIS_URL", "DATABASE_URL",
                     "SECRET_KEY", "HF_TOKEN"):  # fmt: skip
            assert name not in engine_env
        for secret in (NODE_SECRET, url, "leaked", "hf_"):
            assert secret not in raw.decode()
    finally:
        assert agent.terminate() == 0, agent.output()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    output = agent.output()
    assert "Traceback" not in output and "NOPERM" not in output, output
    user = broker_acl.acl_username(node)
    refusals = [e for e in admin.execute_command("ACL", "LOG") if _field(e, "username") == user]
    assert refusals == [], refusals


def _field(entry, name: str):
    if isinstance(entry, dict):
        value = entry.get(name) or entry.get(name.encode())
    else:  # a flat [key, value, ...] list
        pairs = dict(zip(entry[::2], entry[1::2], strict=False))
        value = pairs.get(name) or pairs.get(name.encode())
    return value.decode() if isinstance(value, bytes) else value
