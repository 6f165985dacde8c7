"""Every kind of error the gateway emits, as the official ``openai`` client sees it: the
exception class, the status, the error code, and for streams the error event mid-way."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from tests.gateway.fakes import DisposableRedis, SnapshotBuilder, route, wait_for

MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def errors_world(start_gateway, world, fake_a):
    world.budget = world.snap.key("key-budget", "org-acme", limits={"daily_tokens": 30})
    world.conc = world.snap.key("key-conc", "org-acme", limits={"concurrency": 1})
    world.publish()
    world.gw = start_gateway()
    world.gw.wait_version(world.snap.version)
    return world


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20)


def _code(err: openai.APIStatusError) -> str:
    body = err.response.json()["error"]
    assert body["message"] and err.response.headers["x-request-id"]
    return body["code"]


def test_budget_exceeded(errors_world):
    c = _client(errors_world.gw.url, errors_world.budget)
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(5):
            c.chat.completions.create(model="chat-model", messages=MESSAGES, max_tokens=10)
    assert info.value.status_code == 429 and _code(info.value) == "budget_exceeded"
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_concurrency_limit(errors_world, fake_a):
    fake_a.first_byte_delay = 1.0
    c = _client(errors_world.gw.url, errors_world.conc)
    held = threading.Thread(
        target=lambda: c.chat.completions.create(model="chat-model", messages=MESSAGES)
    )
    held.start()
    assert wait_for(lambda: fake_a.hits == 1)
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="chat-model", messages=MESSAGES)
    held.join()
    assert _code(info.value) == "concurrency_limit_exceeded"
    assert info.value.response.headers["x-ratelimit-limit-concurrency"] == "1"


def test_method_not_allowed_and_unknown_url(errors_world):
    c = _client(errors_world.gw.url, errors_world.key)
    with pytest.raises(openai.APIStatusError) as info:
        c.get("/chat/completions", cast_to=httpx.Response)
    assert info.value.status_code == 405 and _code(info.value) == "method_not_allowed"
    with pytest.raises(openai.NotFoundError) as info:
        c.post("/no/such/endpoint", cast_to=httpx.Response, body={})
    assert _code(info.value) == "unknown_url"


def test_upstream_client_errors_pass_through(errors_world, fake_a):
    fake_a.fail_status = 422
    c = _client(errors_world.gw.url, errors_world.key)
    with pytest.raises(openai.UnprocessableEntityError) as info:
        c.chat.completions.create(model="chat-model", messages=MESSAGES)
    assert info.value.status_code == 422
    assert "a failing" in info.value.response.text


def test_error_in_the_middle_of_a_stream(errors_world, fake_a):
    fake_a.drop_after_chunks = 2
    c = _client(errors_world.gw.url, errors_world.key)
    seen: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in c.chat.completions.create(model="chat-model", messages=MESSAGES, stream=True):
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["tok0 ", "tok1 "]
    assert info.value.code == "upstream_stream_broken"


def test_limits_unavailable(upstream_urls, start_gateway, fake_a):
    server = DisposableRedis()
    server.start()
    try:
        snap = SnapshotBuilder()
        snap.org("org-1", slug="one", models=("chat-model",))
        key = snap.key("k-limited", "org-1", limits={"rpm": 100})
        snap.model("chat-model", [route("a", upstream_urls["a"])])
        snap.publish(server.client())
        gw = start_gateway(redis_url=server.url, redis_timeout=0.3)
        gw.wait_version(1)
        server.kill()
        with pytest.raises(openai.InternalServerError) as info:
            _client(gw.url, key).chat.completions.create(model="chat-model", messages=MESSAGES)
        assert info.value.status_code == 503 and _code(info.value) == "limits_unavailable"
        assert info.value.response.headers["retry-after"] == "1"
    finally:
        server.cleanup()
