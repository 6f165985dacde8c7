"""End to end on real processes: the platform's tiny chat deployment, made autoscaled
(min 0, max 2, one sequence at a time so requests wait), scales to zero when idle,
answers a request after a cold start (the gateway holds it), scales up to max on a
burst, and back down with no failed request. Runs on PostgreSQL, Redis and real vLLM."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.test_fleet_lifecycle import Traffic, real_services, wait_until  # noqa: F401
from tests.support.platform import start_platform

pytestmark = pytest.mark.slow


def test_scale_to_zero_cold_start_burst_and_back(tmp_path: Path, engine_python, real_services):  # noqa: F811
    platform = start_platform(
        tmp_path / "data",
        env=real_services | {"GATEWAY_WORKERS": "1", "AGENT_HEARTBEAT_SECONDS": "2"},
    )
    try:
        platform.wait_ready()
        key = platform.key()
        api = httpx.Client(
            base_url=platform.api, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        client = openai.OpenAI(base_url=platform.gateway, api_key=key, max_retries=0, timeout=600)
        deployment = next(
            d
            for d in api.get("/organizations/demo/deployments/").json()["results"]
            if d["name"] == "tiny-chat"
        )
        url = f"/organizations/demo/deployments/{deployment['id']}/"

        def state():
            return api.get(url).json()

        def replicas(ready_only=True):
            rows = api.get("/organizations/demo/replicas/", params={"page_size": 100}).json()
            return [
                r
                for r in rows["results"]
                if r["deployment"] == "tiny-chat" and (r["state"] == "ready" or not ready_only)
            ]

        response = api.patch(
            url,
            json={
                "min_replicas": 0,
                "max_replicas": 2,
                "scale_target": "waiting",
                "scale_target_value": 1,
                "scale_down_delay_seconds": 15,
                "engine_args": {"max_num_seqs": 1},
            },
        )
        assert response.status_code == 200, response.text

        # Idle: to zero (after the rolling update to the new spec).
        wait_until(lambda: state()["replicas"] == 0 and not replicas(ready_only=False), 900, "zero")

        # A request for the deployment at zero: held, then answered after a cold start.
        started = time.monotonic()
        answer = client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "wake"}], max_tokens=4
        )
        cold_start = time.monotonic() - started
        print(f"cold start through the gateway: {cold_start:.1f} s")
        assert answer.choices[0].message is not None

        # A burst above the target (requests wait behind max_num_seqs=1): up to max.
        burst = openai.OpenAI(base_url=platform.gateway, api_key=key, max_retries=0, timeout=600)
        with Traffic(burst, threads=6) as traffic:
            wait_until(lambda: len(replicas()) == 2, 900, "two ready replicas")
            assert state()["replicas"] == 2
        assert not traffic.failures, traffic.failures[:5]
        assert traffic.ok > 0

        # Light traffic, below the target: down to one replica through a drain, with
        # no failed request; then idle: to zero.
        with Traffic(client, threads=1) as traffic:
            wait_until(lambda: state()["replicas"] == 1, 300, "scale down to one")
            wait_until(lambda: len(replicas(ready_only=False)) == 1, 300, "one replica left")
        assert not traffic.failures, traffic.failures[:5]
        wait_until(lambda: state()["replicas"] == 0, 300, "idle to zero again")

        audit = api.get(
            "/organizations/demo/audit-events/",
            params={"action": "deployment.autoscale", "page_size": 100},
        ).json()["results"]
        reasons = [e["changes"]["reason"][1] for e in audit]
        assert any("idle" in r for r in reasons) and any("above the target" in r for r in reasons)
        assert any("waiting and no replica" in r for r in reasons)
    finally:
        left = platform.stop()
    assert not left, f"processes outlived the platform: {left}"
