"""Budgets near their limit: the prompt is counted by the replica (``/tokenize``) before
admission, far from it nothing extra happens, and when no replica can count, the body's
size bounds the prompt. Through a running gateway with the official ``openai`` client."""

from __future__ import annotations

import time

import httpx
import openai
import orjson
import pytest

from gateway.policy import prompt_count
from tests.gateway.fakes import usage_events, wait_for

MESSAGES = [{"role": "user", "content": "Say hello"}]


def _day() -> int:
    return int(time.time()) // 86400


@pytest.fixture
def budgeted(start_gateway, world, fake_a):
    world.far = world.snap.key("key-far", "org-acme", limits={"daily_tokens": 10**9})
    world.near = world.snap.key("key-near", "org-acme", limits={"daily_tokens": 520})
    world.publish()
    world.gw = start_gateway()
    world.gw.wait_version(world.snap.version)
    yield world
    fake_a.prompt_tokens = 7


def _client(world, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=world.gw.url + "/v1", api_key=key, max_retries=0, timeout=20)


def _metric(world, name: str) -> float:
    text = httpx.get(world.gw.url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith(name + "_created"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_far_from_the_budget_nothing_is_counted(budgeted, fake_a):
    c = _client(budgeted, budgeted.far)
    for _ in range(3):
        c.chat.completions.create(model="chat-model", messages=MESSAGES, max_tokens=10)
    assert fake_a.tokenize_hits == 0
    assert _metric(budgeted, "gateway_prompt_counts_total") == 0


def test_near_the_budget_the_replica_counts_and_the_charge_is_exact(budgeted, fake_a):
    fake_a.prompt_tokens = 150  # far more than the body's bytes / 3
    c = _client(budgeted, budgeted.near)
    served = 0
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(10):
            c.chat.completions.create(model="chat-model", messages=MESSAGES, max_tokens=10)
            served += 1
    assert info.value.response.json()["error"]["code"] == "budget_exceeded"
    # 155 per request: three fit 520, the fourth (150 + 10 reserved) does not.
    assert served == 3 and fake_a.tokenize_hits == 4
    assert _metric(budgeted, "gateway_prompt_counts_total") == 4
    # Read after the four settles (a refused request releases what it held in its own).
    assert wait_for(lambda: len(usage_events(budgeted.redis)) == 4)
    stored = int(budgeted.redis.get(f"sap:lim:key:key-near:d:{_day()}"))
    assert stored == 3 * 155 <= 520


def test_without_a_count_the_body_size_bounds_the_prompt(budgeted, fake_a):
    fake_a.tokenize_status = 404  # a replica (or provider) without /tokenize
    body = {"model": "chat-model", "messages": MESSAGES, "max_tokens": 10}
    size = len(orjson.dumps(body))
    fake_a.prompt_tokens = size  # at most one token per byte
    headers = {"Authorization": f"Bearer {budgeted.near}", "content-type": "application/json"}
    statuses = [
        httpx.post(
            budgeted.gw.url + "/v1/chat/completions",
            headers=headers,
            content=orjson.dumps(body),
            timeout=20,
        ).status_code
        for _ in range(8)
    ]
    served = statuses.count(200)
    assert served >= 1 and statuses[served:] == [429] * (8 - served)
    # Read after the eight settles (a refused request releases what it held in its own).
    events = wait_for(
        lambda: len(usage_events(budgeted.redis)) == 8 and usage_events(budgeted.redis)
    )
    stored = int(budgeted.redis.get(f"sap:lim:key:key-near:d:{_day()}"))
    assert stored == served * (size + 5) <= 520
    assert _metric(budgeted, "gateway_prompt_count_failures_total") >= 1
    assert sum(e["prompt_tokens"] + e["completion_tokens"] for e in events) == stored


def test_token_id_prompts_are_counted_without_a_call(budgeted, fake_a):
    fake_a.prompt_tokens = 40
    c = _client(budgeted, budgeted.near)
    c.completions.create(model="completion-model", prompt=list(range(40)), max_tokens=5)
    assert fake_a.tokenize_hits == 0


def test_batched_prompts_reserve_per_prompt():
    assert prompt_count("completions", {"prompt": ["a", "b", "c"]}) == 3
    assert prompt_count("completions", {"prompt": [1, 2, 3]}) == 1
    assert prompt_count("completions", {"prompt": [[1, 2], [3]]}) == 2
    assert prompt_count("embeddings", {"input": ["a", "b"]}) == 2
    assert prompt_count("embeddings", {"input": "a"}) == 1
    assert prompt_count("chat.completions", {"messages": MESSAGES}) == 1


def test_a_subject_found_near_is_counted_first_until_its_budget_changes(budgeted, fake_a):
    """Near a budget, the estimate admission only ever answers "count first": the gateway
    remembers the subject and goes straight to the count and one exact admission, until
    a new snapshot (the budget may have been raised) makes it ask again."""
    fake_a.prompt_tokens = 10
    limiter = budgeted.gw.app.services.limiter
    calls: list[bool] = []
    admit = limiter.admit

    async def counting_admit(*args, **kwargs):
        calls.append(kwargs.get("budget_reserve", 0) is None)  # True: an exact admission
        return await admit(*args, **kwargs)

    limiter.admit = counting_admit
    c = _client(budgeted, budgeted.near)
    for _ in range(3):
        c.chat.completions.create(model="chat-model", messages=MESSAGES, max_tokens=10)
    # The first request: estimate ("count first"), count, exact; the next two: count, exact.
    assert calls == [False, True, True, True] and fake_a.tokenize_hits == 3

    budgeted.snap.entry("key-near")["limits"] = {"daily_tokens": 10**9}
    budgeted.gw.wait_version(budgeted.publish())
    c.chat.completions.create(model="chat-model", messages=MESSAGES, max_tokens=10)
    assert calls[4:] == [False] and fake_a.tokenize_hits == 3  # far now: no count


def test_near_budgets_hint_expires_and_is_bounded(monkeypatch):
    from gateway import limits

    clock = [1000.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: clock[0])
    near = limits.NearBudgets(ttl=10.0, size=3)
    key = limits.Subject("key", "k1", {"daily_tokens": 5})
    team = limits.Subject("team", "t1", {})
    assert near.reason([key, team]) is None
    near.mark(team.base, "monthly_tokens")
    assert near.reason([key, team]) == "monthly_tokens"
    clock[0] += 10.5
    assert near.reason([key, team]) is None  # expired
    near.mark(key.base, "daily_tokens")
    near.mark("other", "daily_tokens")
    near.mark("third", "daily_tokens")  # full: the expired entry is dropped first
    assert near.reason([key]) == "daily_tokens" and len(near._until) == 3
    near.mark("fourth", "daily_tokens")  # full of live ones: all forgotten
    assert near.reason([key]) is None and len(near._until) == 1
    near.forget([key])
    assert near.reason([key]) is None


def test_near_a_budget_the_exact_cost_decides_and_a_refusal_holds_nothing(
    request, start_gateway, world, fake_a
):
    """The count overlaps the admission of the estimate: a prompt counted above the
    estimate tops the budget up (or is refused, releasing what it held: budget and
    concurrency slot), one whose estimate does not fit but whose exact cost does is
    served."""
    world.snap.key("key-tight", "org-acme", limits={"daily_tokens": 300, "concurrency": 1})
    world.publish()
    gw = start_gateway()
    gw.wait_version(world.snap.version)
    body = orjson.dumps({"model": "chat-model", "messages": MESSAGES, "max_tokens": 10})
    estimate = -(-len(body) // 3) + 10  # what the admission of the estimate holds
    headers = {
        "Authorization": f"Bearer {world.snap.full_keys['key-tight']}",
        "content-type": "application/json",
    }

    asked: list[int] = []

    def ask(prompt_tokens: int) -> int:
        fake_a.prompt_tokens = prompt_tokens
        status = httpx.post(
            gw.url + "/v1/chat/completions", headers=headers, content=body, timeout=20
        ).status_code
        asked.append(status)
        # Settled (the settle appends the usage event) before the counters are read.
        assert wait_for(lambda: len(usage_events(world.redis)) == len(asked))
        return status

    def stored() -> int:
        return int(world.redis.get(f"sap:lim:key:key-tight:d:{_day()}") or 0)

    request.addfinalizer(lambda: setattr(fake_a, "prompt_tokens", 7))
    assert ask(150) == 200  # counted 150 > the estimate: topped up to 160, charged 155
    assert stored() == 155
    assert ask(150) == 429  # 155 + 160 > 300: refused at the top-up
    assert stored() == 155  # the estimate it held is released
    # 300 - 155 = 145 left: fill up to leave less than the estimate but more than 15.
    fill = 300 - 155 - (estimate - 1) - 5
    assert ask(fill) == 200
    assert 300 - stored() == estimate - 1
    # The estimate does not fit; the exact cost (5 + 10) does, and the slot is free.
    assert ask(5) == 200
    assert stored() == 300 - (estimate - 1) + 10
    events = usage_events(world.redis)
    assert [e["status"] for e in events] == [200, 429, 200, 200]
    assert sum(e["prompt_tokens"] + e["completion_tokens"] for e in events) == stored()
    assert world.redis.zcard("sap:lim:key:key-tight:conc") == 0
