"""End to end on real processes: a CPU pool with one node agent serves the
tiny chat model and MiniLM through the gateway; the chat deployment scales 1 -> 2
(traffic reaches both), survives a killed vLLM process, rolls to a new spec without a
failed request, and scales to 0. Runs the platform on PostgreSQL and Redis."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
import redis

from tests.support.platform import start_platform

pytestmark = pytest.mark.slow


@pytest.fixture
def real_services():
    """A fresh PostgreSQL database and an empty Redis database for the platform."""
    name = f"sap_fleet_{uuid.uuid4().hex[:8]}"
    admin = "postgres://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    redis_url = os.environ.get("FLEET_E2E_REDIS_URL", "redis://127.0.0.1:6379/10")
    redis.Redis.from_url(redis_url).flushdb()
    yield {"DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}", "REDIS_URL": redis_url}
    redis.Redis.from_url(redis_url).flushdb()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Traffic:
    """Chat requests in a loop from a few threads; every failure is kept."""

    def __init__(self, client: openai.OpenAI, threads: int = 3):
        self.client = client
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.client.chat.completions.create(
                    model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
                self.ok += 1
            except Exception as exc:  # any failure is what the test is about
                self.failures.append(repr(exc))
            time.sleep(0.05)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)


def admin_session(base: str, username: str, password: str) -> httpx.Client:
    """A browser-like session of the platform administrator (fleet is theirs)."""
    client = httpx.Client(timeout=30)
    client.get(f"{base}/admin/login/")
    response = client.post(
        f"{base}/admin/login/",
        data={"username": username, "password": password, "next": "/admin/"},
        headers={"X-CSRFToken": client.cookies["csrftoken"], "Referer": f"{base}/admin/login/"},
    )
    assert response.status_code in (200, 302) and "sessionid" in client.cookies, response.text[:500]
    return client


def wait_until(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def test_fleet_lifecycle(tmp_path: Path, engine_python, real_services):
    platform = start_platform(
        tmp_path / "data",
        env=real_services | {"PLATFORM_ADMIN_PASSWORD": "fleet-pass-1", "GATEWAY_WORKERS": "1"},
    )
    try:
        platform.wait_ready()
        key = platform.key()
        api = httpx.Client(
            base_url=platform.api, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        client = openai.OpenAI(base_url=platform.gateway, api_key=key, max_retries=0, timeout=120)
        assert len(client.embeddings.create(model="minilm", input=["x"]).data[0].embedding) == 384

        admin = admin_session(platform.api.removesuffix("/api/v1"), "admin", "fleet-pass-1")
        nodes = admin.get(f"{platform.api}/fleet/nodes/").json()["results"]
        assert [n["pool"] for n in nodes] == ["local"]  # bootstrap registered the local node
        assert nodes[0]["inventory"]["kind"] in ("cpu", "gpu")

        def chat_replicas(state="ready"):
            replicas = api.get("/organizations/demo/replicas/", params={"page_size": 100}).json()
            return [
                r
                for r in replicas["results"]
                if r["deployment"] == "tiny-chat" and r["state"] == state
            ]

        deployment = next(
            d
            for d in api.get("/organizations/demo/deployments/").json()["results"]
            if d["name"] == "tiny-chat"
        )
        url = f"/organizations/demo/deployments/{deployment['id']}/"

        # 1 -> 2 replicas: both receive traffic.
        assert api.patch(url, json={"replicas": 2}).status_code == 200
        ready = wait_until(
            lambda: len(chat_replicas()) == 2 and chat_replicas(), 600, "two ready replicas"
        )
        time.sleep(2)  # the snapshot with both routes reaches the gateway
        with Traffic(client, threads=4) as traffic:
            time.sleep(8)
        assert not traffic.failures and traffic.ok > 8
        time.sleep(3)  # the ledger consumer catches up
        usage = api.get(
            "/organizations/demo/usage/", params={"model": "tiny-chat", "page_size": 500}
        ).json()
        assert {r["replica"] for r in usage["results"]} >= {r["id"] for r in ready}

        # Kill one vLLM process: it comes back, and traffic keeps flowing meanwhile.
        victim = ready[0]
        victim_pid = next(
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit()
            and f"--port\x00{victim['port']}\x00"
            in (p / "cmdline").read_bytes().decode(errors="replace")
        )
        with Traffic(client) as traffic:
            os.kill(victim_pid, signal.SIGKILL)
            wait_until(
                lambda: any(
                    r["id"] == victim["id"] and r["restarts"] >= 1 for r in chat_replicas()
                ),
                600,
                "the killed replica to be restarted and ready",
            )
        assert not traffic.failures, traffic.failures[:5]

        # Change the spec: a rolling update with no failed request.
        old_hash = ready[0]["spec_hash"]
        with Traffic(client) as traffic:
            assert api.patch(url, json={"max_model_len": 1024}).status_code == 200
            wait_until(
                lambda: (
                    (rs := chat_replicas())
                    and len(rs) == 2
                    and all(r["spec_hash"] != old_hash for r in rs)
                    and not [
                        r
                        for r in api.get("/organizations/demo/replicas/").json()["results"]
                        if r["deployment"] == "tiny-chat" and r["spec_hash"] == old_hash
                    ]
                ),
                900,
                "two ready replicas with the new spec and no old ones",
            )
        assert traffic.ok > 0 and not traffic.failures, traffic.failures[:5]

        # Scale to 0: no replica left, and the gateway answers 503.
        assert api.patch(url, json={"replicas": 0}).status_code == 200
        wait_until(
            lambda: (
                not [
                    r
                    for r in api.get("/organizations/demo/replicas/").json()["results"]
                    if r["deployment"] == "tiny-chat"
                ]
            ),
            300,
            "no tiny-chat replica",
        )
        time.sleep(2)
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(
                model="tiny-chat", messages=[{"role": "user", "content": "x"}], max_tokens=2
            )
        assert info.value.status_code == 503
        audit = api.get(
            "/organizations/demo/audit-events/", params={"action": "deployment."}
        ).json()
        assert {"deployment.create", "deployment.update"} <= {e["action"] for e in audit["results"]}
    finally:
        left = platform.stop()
    assert not left, f"processes outlived the platform: {left}"
