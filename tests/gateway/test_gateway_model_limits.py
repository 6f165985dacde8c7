"""Limits per model: a key, team or organization may have limits for one model alias on
top of its limits for all models; the tightest applicable limit wins, in the one
admission call. Through a running gateway with the official ``openai`` client, and at
the limiter level against a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid

import openai
import pytest

from gateway import contract
from gateway.limits import Limiter, Subject
from gateway.resp import ScriptClient
from tests.gateway.fakes import usage_events, wait_for

MESSAGES = [{"role": "user", "content": "Say hello"}]


def _day() -> int:
    return int(time.time()) // 86400


@pytest.fixture
def per_model(start_gateway, world, fake_a):
    # 300 prompt + 5 completion tokens per answer, far more than the body suggests.
    fake_a.prompt_tokens = 300
    world.snap.org(
        "org-acme",
        slug="acme",
        models=("chat-model", "embed-model", "completion-model"),
        model_limits={"embed-model": {"rpm": 3}},
    )
    world.snap.team("team-ml", "org-acme", model_limits={"completion-model": {"max_tokens": 5}})
    world.capped = world.snap.key(
        "key-pm",
        "org-acme",
        team="team-ml",
        model_limits={"chat-model": {"daily_tokens": 1000}},
    )
    world.publish()
    gw = start_gateway()
    gw.wait_version(world.snap.version)
    world.gw = gw
    yield world
    fake_a.prompt_tokens = 7


def _client(world, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=world.gw.url + "/v1", api_key=key, max_retries=0, timeout=20)


def test_key_budget_for_one_model_refuses_it_and_serves_the_others(per_model, fake_a):
    c = _client(per_model, per_model.capped)
    for _ in range(3):
        c.chat.completions.create(model="chat-model", messages=MESSAGES, max_tokens=10)
    # 3 x 305 tokens used of the 1,000 for chat-model: the next one (its prompt counted
    # exactly, as the budget is near: 300 + 10) does not fit.
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="chat-model", messages=MESSAGES, max_tokens=10)
    body = info.value.response.json()["error"]
    assert body["code"] == "budget_exceeded"
    assert "daily token budget of the key for the model 'chat-model' (1000)" in body["message"]
    assert int(info.value.response.headers["x-ratelimit-limit-tokens"]) == 1000
    assert fake_a.tokenize_hits == 4
    # Another model, same key: no budget for it, served.
    c.embeddings.create(model="embed-model", input="one")
    # Per-model counters hold that model's usage only; the key's counter holds both
    # (read once the five requests have settled).
    r = per_model.redis
    assert wait_for(lambda: len(usage_events(r)) == 5)
    base = f"{contract.LIMITS_PREFIX}key:key-pm"
    assert int(r.get(f"{base}:model:chat-model:d:{_day()}")) == 3 * 305
    assert int(r.get(f"{base}:model:embed-model:d:{_day()}")) == 300
    assert int(r.get(f"{base}:d:{_day()}")) == 3 * 305 + 300
    assert int(r.get(f"{contract.LIMITS_PREFIX}org:org-acme:model:chat-model:d:{_day()}")) == (
        3 * 305
    )


def test_org_limit_for_one_model_applies_to_every_key(per_model):
    for key in (per_model.capped, per_model.key):
        c = _client(per_model, key)
        if key == per_model.capped:
            for _ in range(3):
                c.embeddings.create(model="embed-model", input="one")
        with pytest.raises(openai.RateLimitError) as info:
            c.embeddings.create(model="embed-model", input="one")
        body = info.value.response.json()["error"]
        assert body["code"] == "rate_limit_exceeded"
        assert "of the org for the model 'embed-model' (3)" in body["message"]
        assert info.value.response.headers["x-ratelimit-limit-requests"] == "3"
    # The organization's other models are not limited by it.
    _client(per_model, per_model.key).chat.completions.create(model="chat-model", messages=MESSAGES)
    events = wait_for(
        lambda: len(usage_events(per_model.redis)) == 6 and usage_events(per_model.redis)
    )
    assert [e["status"] for e in events] == [200, 200, 200, 429, 429, 200]


def test_team_max_tokens_for_one_model(per_model):
    c = _client(per_model, per_model.key)
    with pytest.raises(openai.BadRequestError) as info:
        c.completions.create(model="completion-model", prompt="x", max_tokens=8)
    body = info.value.response.json()["error"]
    assert (body["code"], body["param"]) == ("max_tokens_too_large", "max_tokens")
    c.completions.create(model="completion-model", prompt="x", max_tokens=5)
    c.chat.completions.create(model="chat-model", messages=MESSAGES, max_tokens=8)


def test_tightest_of_all_models_and_one_model_wins_in_one_admission(redis_client, redis_url):
    """The all-models limit still binds a model with its own, looser limit, and the
    per-model one binds when it is the tighter; both at once, never one half admitted."""

    async def scenario():
        scripts = ScriptClient(redis_url, timeout=5.0)
        limiter = Limiter(scripts, 60.0, 10_000)
        tag = uuid.uuid4().hex[:8]
        try:

            def subjects(model, key_all, key_model):
                return [
                    Subject("key", f"k-{tag}", key_all),
                    Subject("key", f"k-{tag}", key_model, model),
                    Subject("org", f"o-{tag}", {}),
                    Subject("org", f"o-{tag}", {}, model),
                ]

            big = subjects("big", {"daily_tokens": 100}, {"daily_tokens": 1000})
            small = subjects("small", {"daily_tokens": 100}, {"daily_tokens": 30})
            await limiter.admit(small, uuid.uuid4().hex, 30)
            with pytest.raises(Exception) as info:
                await limiter.admit(small, uuid.uuid4().hex, 1)
            assert info.value.reason == "daily_tokens" and "'small'" in str(info.value)
            await limiter.admit(big, uuid.uuid4().hex, 70)
            with pytest.raises(Exception) as info:
                await limiter.admit(big, uuid.uuid4().hex, 1)
            # Refused by the key's all-models budget, although 'big' allows 1,000.
            assert info.value.reason == "daily_tokens" and "model" not in str(info.value)
        finally:
            await scripts.aclose()

    asyncio.run(scenario())
