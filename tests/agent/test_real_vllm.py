"""The agent starting a REAL vLLM CPU server of the tiny chat model, exactly as on a
host: through the supervisor, with the replica's port and API key, then draining it."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.agent.conftest import desired, make_settings, make_spec, pid_alive, with_settings
from workers.agent import processes
from workers.agent.inventory import discover_inventory

pytestmark = pytest.mark.slow


def test_agent_runs_a_real_vllm_replica(
    tmp_path, engine_python, tiny_chat_model_dir, harness_factory
):
    settings = with_settings(
        make_settings(tmp_path),
        engine_command=None,  # the real `python -m vllm.entrypoints.openai.api_server`
        engine_python=engine_python,
        model_cache_dir=tiny_chat_model_dir.parent,
        startup_timeout_seconds=300,
        health_interval_seconds=1.0,
        stop_timeout_seconds=30,
        drain_grace_seconds=0.5,
    )
    harness = harness_factory(settings, inventory=discover_inventory())
    spec = make_spec(
        model=tiny_chat_model_dir.name,  # relative: under the model cache dir
        served_model_name="tiny-chat",
        engine_args={"enforce_eager": True},
    )
    requested_at = time.monotonic()
    harness.apply(desired(1, spec))
    replica = harness.wait_state(spec["id"], "ready", timeout=300)
    startup_s = time.monotonic() - requested_at
    print(f"\nreal vLLM replica ready {startup_s:.1f} s after its desired state was applied")
    pid = replica["pid"]
    assert harness.states_of(spec["id"])[:3] == ["pending", "starting", "ready"]

    base_url = f"http://127.0.0.1:{spec['port']}/v1"
    client = openai.OpenAI(base_url=base_url, api_key=spec["api_key"], max_retries=0, timeout=120)
    answer = client.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "Hello from the node agent test."}],
        max_tokens=8,
        extra_body={"ignore_eos": True},
    )
    assert answer.choices[0].message.content is not None
    assert answer.usage.completion_tokens == 8
    wrong = openai.OpenAI(base_url=base_url, api_key="not-the-replica-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()

    # The agent's /metrics scrape sees the request.
    replica = harness.wait_state(spec["id"], "ready")
    deadline = time.monotonic() + 60
    while replica["load"].get("generation_tokens_total", 0) < 8:
        assert time.monotonic() < deadline, replica["load"]
        time.sleep(0.5)
        replica = harness.replica(spec["id"])
    assert replica["load"]["prompt_tokens_total"] > 0
    assert replica["load"]["num_requests_running"] == 0
    assert 0 <= replica["load"]["kv_cache_usage_perc"] <= 1

    group = processes.group_members(pid)
    assert len(group) >= 2  # the API server and its engine core

    # Leaving the desired state: drained, SIGTERMed, and nothing of it remains.
    removed_at = time.monotonic()
    harness.apply(desired(2))
    harness.wait_gone(spec["id"], timeout=120)
    print(f"drained and stopped {time.monotonic() - removed_at:.1f} s after removal")
    assert harness.states_of(spec["id"])[-2:] == ["draining", "stopped"]
    assert not pid_alive(pid)
    assert not processes.group_members(pid)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{spec['port']}/health", timeout=2)
