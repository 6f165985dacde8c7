"""End to end with the official ``openai`` client against a running gateway (uvicorn)
in front of the fake upstream: every endpoint and every error the gateway returns."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.gateway.fakes import free_port, route, usage_events, wait_for

MESSAGES = [{"role": "user", "content": "Say hello"}]
#: Per-request headers that make the client send no Authorization header.
NO_AUTH = {"Authorization": openai.Omit()}


def header_key_client(e2e, headers: dict[str, str]) -> openai.OpenAI:
    """An OpenAI client that sends no Authorization header, only ``headers``."""
    return openai.OpenAI(
        base_url=e2e.gw.url + "/v1",
        api_key="unused",
        default_headers=headers,
        max_retries=0,
    )


@pytest.fixture
def e2e(start_gateway, world, upstream_urls):
    world.snap.org(
        "org-acme",
        slug="acme",
        models=(
            "chat-model",
            "embed-model",
            "completion-model",
            "external-model",
            "no-route-model",
            "dead-model",
            "slow-model",
        ),
    )
    world.snap.model("dead-model", [route("dead", f"http://127.0.0.1:{free_port()}")])
    world.snap.model("slow-model", [route("c", upstream_urls["c"])])
    world.expired = world.snap.key("key-expired", "org-acme", expires_at=time.time() - 60)
    world.revoked = world.snap.key("key-revoked", "org-acme", revoked=True)
    world.limited = world.snap.key("key-limited", "org-acme", limits={"rpm": 1, "tpm": 100000})
    world.manage = world.snap.key("key-manage", "org-acme", scopes=("manage",))
    world.publish()
    gw = start_gateway(max_body_bytes=64 * 1024, first_byte_timeout=1.0)
    gw.wait_version(world.snap.version)
    world.gw = gw
    return world


def client(e2e, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=e2e.gw.url + "/v1", api_key=key or e2e.key, max_retries=0, timeout=20
    )


# --------------------------------------------------------------------------- success


def test_chat_completion(e2e, fake_a):
    answer = client(e2e).chat.completions.create(model="chat-model", messages=MESSAGES)
    assert answer.choices[0].message.content == "Hello from a"
    assert answer.model == "chat-model"
    assert answer.usage.prompt_tokens == 7 and answer.usage.completion_tokens == 5


def test_streaming_chat(e2e, fake_a):
    stream = client(e2e).chat.completions.create(model="chat-model", messages=MESSAGES, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    stream = client(e2e).chat.completions.create(
        model="chat-model",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage.total_tokens == 12 and chunks[-1].choices == []


def test_completions(e2e, fake_a):
    c = client(e2e)
    answer = c.completions.create(model="completion-model", prompt="Once upon", max_tokens=8)
    assert answer.choices[0].text == "Hello from a"
    streamed = "".join(
        chunk.choices[0].text
        for chunk in c.completions.create(model="completion-model", prompt="x", stream=True)
    )
    assert streamed == "tok0 tok1 tok2 tok3 tok4 "
    assert fake_a.requests[-1]["path"] == "/v1/completions"


def test_embeddings(e2e, fake_a):
    result = client(e2e).embeddings.create(model="embed-model", input=["one", "two"])
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[1].embedding == [0.1, 0.2, 0.3, 1.0]
    assert fake_a.requests[-1]["body"]["model"] == "served-embed"
    assert result.model == "embed-model"


def test_model_list_is_key_models_intersect_org_models(e2e):
    ids = {m.id for m in client(e2e).models.list()}
    assert ids == {
        "chat-model",
        "embed-model",
        "completion-model",
        "external-model",
        "no-route-model",
        "dead-model",
        "slow-model",
    }
    assert [m.id for m in client(e2e, e2e.other_key).models.list()] == ["chat-model"]
    assert client(e2e).models.retrieve("chat-model").id == "chat-model"
    with pytest.raises(openai.NotFoundError):
        client(e2e, e2e.other_key).models.retrieve("embed-model")


@pytest.mark.parametrize("header", ["api-key", "x-api-key"])
def test_key_in_other_headers(e2e, header, fake_a):
    c = header_key_client(e2e, {header: e2e.key})
    answer = c.chat.completions.create(model="chat-model", messages=MESSAGES, extra_headers=NO_AUTH)
    assert answer.choices[0].message.content == "Hello from a"


# --------------------------------------------------------------------------- errors


def check_error(info, status: int, code: str | None = None, param: str | None = None):
    err = info.value
    assert err.status_code == status
    body = err.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["message"]
    if code:
        assert body["code"] == code
    if param:
        assert body["param"] == param
    assert err.response.headers["x-request-id"]
    return err


@pytest.mark.parametrize("form", ["authorization", "api-key", "x-api-key"])
def test_401_for_a_bad_key_in_each_header_form(e2e, form):
    bad = "sk-aaaaaaaaaaaa.notthesecretnotthesecret"
    if form == "authorization":
        c, extra = client(e2e, bad), None
    else:
        c, extra = header_key_client(e2e, {form: bad}), NO_AUTH
    with pytest.raises(openai.AuthenticationError) as info:
        c.chat.completions.create(model="chat-model", messages=MESSAGES, extra_headers=extra)
    check_error(info, 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        c.models.list(extra_headers=extra)


def test_401_without_a_key(e2e):
    c = header_key_client(e2e, {})
    with pytest.raises(openai.AuthenticationError) as info:
        c.chat.completions.create(model="chat-model", messages=MESSAGES, extra_headers=NO_AUTH)
    check_error(info, 401, "missing_api_key")


def test_401_expired_and_revoked(e2e):
    with pytest.raises(openai.AuthenticationError) as info:
        client(e2e, e2e.expired).chat.completions.create(model="chat-model", messages=MESSAGES)
    check_error(info, 401, "expired_api_key")
    with pytest.raises(openai.AuthenticationError) as info:
        client(e2e, e2e.revoked).embeddings.create(model="embed-model", input="x")
    check_error(info, 401, "revoked_api_key")


def test_403_model_not_allowed_by_key_or_org_and_external(e2e):
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(e2e).chat.completions.create(model="forbidden-model", messages=MESSAGES)
    check_error(info, 403, "model_not_allowed", "model")
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(e2e, e2e.other_key).embeddings.create(model="embed-model", input="x")
    check_error(info, 403, "model_not_allowed")
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(e2e).chat.completions.create(model="external-model", messages=MESSAGES)
    check_error(info, 403, "external_not_allowed")
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(e2e, e2e.manage).chat.completions.create(model="chat-model", messages=MESSAGES)
    check_error(info, 403, "insufficient_scope")


def test_404_unknown_model(e2e):
    with pytest.raises(openai.NotFoundError) as info:
        client(e2e).chat.completions.create(model="gpt-17", messages=MESSAGES)
    check_error(info, 404, "model_not_found", "model")


def test_400_invalid_parameters_and_json(e2e):
    with pytest.raises(openai.BadRequestError) as info:
        client(e2e).chat.completions.create(model="chat-model", messages=MESSAGES, n=100)
    check_error(info, 400, param="n")
    with pytest.raises(openai.BadRequestError) as info:
        client(e2e).chat.completions.create(model="chat-model", messages=MESSAGES, max_tokens=10**7)
    check_error(info, 400, "max_tokens_too_large", "max_tokens")
    with pytest.raises(openai.BadRequestError) as info:
        client(e2e).chat.completions.create(model="chat-model", messages=[])
    check_error(info, 400, param="messages")
    r = httpx.post(
        e2e.gw.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {e2e.key}", "Content-Type": "application/json"},
        content=b'{"model": "chat-model", "messages": [',
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_413_body_too_large(e2e):
    with pytest.raises(openai.APIStatusError) as info:
        client(e2e).chat.completions.create(
            model="chat-model", messages=[{"role": "user", "content": "x" * 100_000}]
        )
    check_error(info, 413, "request_too_large")


def test_429_with_retry_after_and_rate_limit_headers(e2e, fake_a):
    c = client(e2e, e2e.limited)
    first = c.chat.completions.with_raw_response.create(model="chat-model", messages=MESSAGES)
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100000
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="chat-model", messages=MESSAGES)
    err = check_error(info, 429, "rate_limit_exceeded")
    assert 1 <= int(err.response.headers["retry-after"]) <= 60
    assert err.response.headers["x-ratelimit-limit-requests"] == "1"
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    events = wait_for(lambda: len(usage_events(e2e.redis)) == 2 and usage_events(e2e.redis))
    assert [e["status"] for e in events] == [200, 429]
    assert events[1]["error"] == "rate_limit_exceeded"


def test_502_503_504_upstream_trouble(e2e, upstreams):
    with pytest.raises(openai.InternalServerError) as info:
        client(e2e).chat.completions.create(model="dead-model", messages=MESSAGES)
    check_error(info, 502, "upstream_unavailable")
    with pytest.raises(openai.InternalServerError) as info:
        client(e2e).chat.completions.create(model="no-route-model", messages=MESSAGES)
    check_error(info, 503, "no_route")
    slow = upstreams["c"][0]
    slow.first_byte_delay = 3
    with pytest.raises(openai.InternalServerError) as info:
        client(e2e).chat.completions.create(model="slow-model", messages=MESSAGES)
    check_error(info, 504, "upstream_timeout")
