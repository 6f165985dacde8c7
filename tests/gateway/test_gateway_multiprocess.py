"""Several real gateway processes (``python -m gateway``) sharing one Redis: a change
of snapshot reaches all of them within 1 s, limits are exact across them, and the
metrics of a multi-worker gateway add up whichever worker answers the scrape."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.gateway.conftest import REPO, process_env
from tests.gateway.fakes import usage_events, wait_for

pytestmark = pytest.mark.timeout(180)

CHAT = {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def models_status(url: str, key: str) -> int:
    return httpx.get(
        url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5
    ).status_code


def time_until_refused(procs, key: str, started: float, limit: float = 5.0) -> list[float]:
    """For each process, seconds from ``started`` until it answers 401 for ``key``."""
    results: list[float | None] = [None] * len(procs)

    def watch(index: int) -> None:
        with httpx.Client(timeout=5) as client:
            while time.monotonic() - started < limit:
                r = client.get(
                    procs[index].url + "/v1/models", headers={"Authorization": f"Bearer {key}"}
                )
                if r.status_code == 401:
                    results[index] = time.monotonic() - started
                    return
                time.sleep(0.01)

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(len(procs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r if r is not None else float("inf") for r in results]


def test_revocation_reaches_four_processes_within_one_second(world, start_processes):
    # The version poll is slowed to 30 s, so only the pub/sub notice can be in time.
    procs = start_processes(4, GATEWAY_SNAPSHOT_POLL_INTERVAL="30")
    assert all(models_status(p.url, world.key) == 200 for p in procs)
    world.snap.entry("key-1")["revoked"] = True
    started = time.monotonic()
    world.publish()
    delays = time_until_refused(procs, world.key, started)
    print("revocation delays (s):", [round(d, 3) for d in delays])
    assert max(delays) < 1.0, delays
    # The other key of the same organization is untouched.
    assert all(models_status(p.url, world.other_key) == 200 for p in procs)


def test_missed_notice_is_caught_by_the_poll(world, start_processes):
    procs = start_processes(2)
    assert all(models_status(p.url, world.key) == 200 for p in procs)
    world.snap.entry("key-1")["revoked"] = True
    started = time.monotonic()
    world.snap.publish(world.redis, notify=False)  # SET without PUBLISH
    delays = time_until_refused(procs, world.key, started)
    assert max(delays) < 2.5, delays  # the ~1 s version poll, plus scheduling slack


def run_concurrently(procs, key: str, count: int, body=CHAT, at_once: bool = False) -> list[int]:
    """``count`` requests spread over ``procs``. ``at_once``: each from its own connected
    client, all released together by a barrier, so admissions race as hard as they can."""
    if at_once:
        barrier = threading.Barrier(count)

        def racer(i: int) -> int:
            with httpx.Client(base_url=procs[i % len(procs)].url, timeout=60) as client:
                client.get("/healthz")  # connected before the race
                barrier.wait()
                return client.post(
                    "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body
                ).status_code

        with ThreadPoolExecutor(max_workers=count) as pool:
            return list(pool.map(racer, range(count)))

    def one(i: int) -> int:
        url = procs[i % len(procs)].url
        return httpx.post(
            url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json=body,
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        return list(pool.map(one, range(count)))


def test_rate_limit_is_exact_across_four_processes(world, start_processes, fake_a):
    limit = 25
    key = world.snap.key("key-rpm", "org-acme", team="team-ml", limits={"rpm": limit})
    world.publish()
    procs = start_processes(4)
    fake_a.first_byte_delay = 0.02  # keep many requests in flight at once
    statuses = run_concurrently(procs, key, 120, at_once=True)
    assert statuses.count(200) == limit
    assert statuses.count(429) == 120 - limit
    events = wait_for(
        lambda: len(usage_events(world.redis)) == 120 and usage_events(world.redis), timeout=10
    )
    assert sum(1 for e in events if e["status"] == 200) == limit


def test_token_budget_is_never_overspent_across_four_processes(world, start_processes, fake_a):
    budget = 200
    key = world.snap.key("key-budget", "org-acme", team="team-ml", limits={"daily_tokens": budget})
    world.publish()
    procs = start_processes(4)
    fake_a.first_byte_delay = 0.02
    statuses = run_concurrently(procs, key, 80)
    admitted = statuses.count(200)
    assert admitted >= 1
    assert statuses.count(429) == 80 - admitted
    per_request = fake_a.prompt_tokens + fake_a.completion_tokens
    assert admitted * per_request <= budget
    events = wait_for(
        lambda: len(usage_events(world.redis)) == 80 and usage_events(world.redis), timeout=10
    )
    spent = sum(e["prompt_tokens"] + e["completion_tokens"] for e in events)
    assert spent == admitted * per_request <= budget
    day = int(world.redis.time()[0]) // 86400
    stored = int(world.redis.get(f"sap:lim:key:key-budget:d:{day}"))
    assert stored == spent  # every reservation was settled to the real count
    # The budget is nearly used up: what is left is less than one more reservation.
    assert budget - spent < per_request + 40


def test_metrics_add_up_across_workers(world, start_processes, fake_a):
    (proc,) = start_processes(1, workers=2)
    statuses = run_concurrently([proc], world.key, 40)
    assert statuses == [200] * 40
    bad = httpx.post(
        proc.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {world.key}"},
        json={**CHAT, "model": "no-such-model-" + "x" * 30},
    )
    assert bad.status_code == 404
    pattern = re.compile(
        r"gateway_requests_total\{"
        r'endpoint="chat.completions",model="chat-model",org="acme",status="200"\} (\S+)'
    )
    # Whichever worker answers, the scrape covers both.
    for _ in range(6):
        text = httpx.get(proc.url + "/metrics").text
        match = pattern.search(text)
        assert match and float(match.group(1)) == 40.0
        assert 'model="unknown",org="acme",status="404"' in text
        assert "key-1" not in text and "no-such-model" not in text
        assert "gateway_overhead_seconds_bucket" in text
        assert "gateway_time_to_first_token_seconds_bucket" in text
        assert 'gateway_tokens_total{direction="out",model="chat-model",org="acme"} 200.0' in text


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GATEWAY_PORT", "eighty", "GATEWAY_PORT: expected an integer"),
        ("GATEWAY_LIMITS_FAIL_MODE", "maybe", "GATEWAY_LIMITS_FAIL_MODE: expected one of"),
        ("API_KEY_PEPPER", "", "API_KEY_PEPPER (or API_KEY_PEPPER_FILE) is required"),
    ],
)
def test_bad_configuration_stops_the_launch(redis_url, variable, value, message):
    env = process_env(redis_url, **{variable: value})
    done = subprocess.run(
        [sys.executable, "-m", "gateway"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_budget_holds_when_prompts_are_five_times_the_estimate(world, start_processes, fake_a):
    """Whatever the estimate: the upstream counts 5x the bytes/3 estimate of each prompt,
    200 requests race through 4 processes, and the charge never passes the budget (the
    documented bound: zero, when the replica counts prompts and enforces its context
    length and max_tokens)."""
    import math

    import orjson

    budget = 10_000
    key = world.snap.key("key-5x", "org-acme", team="team-ml", limits={"daily_tokens": budget})
    world.snap.model("chat-model", world.snap.models["chat-model"]["routes"], context_length=1024)
    world.publish()
    raw = orjson.dumps(CHAT)
    estimate = math.ceil(len(raw) / 3)
    fake_a.prompt_tokens = 5 * estimate
    fake_a.first_byte_delay = 0.02
    procs = start_processes(4)
    try:

        def one(i: int) -> int:
            return httpx.post(
                procs[i % 4].url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
                content=raw,
                timeout=30,
            ).status_code

        with ThreadPoolExecutor(max_workers=64) as pool:
            statuses = list(pool.map(one, range(200)))
    finally:
        fake_a.prompt_tokens = 7
    admitted = statuses.count(200)
    assert admitted >= 1 and statuses.count(429) == 200 - admitted
    events = wait_for(
        lambda: len(usage_events(world.redis)) == 200 and usage_events(world.redis), timeout=10
    )
    charged = sum(e["prompt_tokens"] + e["completion_tokens"] for e in events)
    day = int(world.redis.time()[0]) // 86400
    stored = int(world.redis.get(f"sap:lim:key:key-5x:d:{day}"))
    print(f"5x prompts: {admitted} admitted, {charged} tokens charged of {budget}")
    assert stored == charged <= budget
    per_request = 5 * estimate + fake_a.completion_tokens
    assert budget - charged < per_request + 10  # and the budget was used, not refused early
