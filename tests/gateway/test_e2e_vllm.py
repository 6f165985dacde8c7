"""The gateway in front of real vLLM servers (CPU): chat, streaming and embeddings
through the official client, with real token counts in the usage events."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from tests.gateway.fakes import SnapshotBuilder, usage_events, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def root_of(server) -> str:
    url = getattr(server, "root_url", None) or server.base_url
    return url[: -len("/v1")] if url.endswith("/v1") else url


@pytest.fixture
def vllm_world(vllm_chat, vllm_embed, redis_client, start_gateway):
    snap = SnapshotBuilder()
    snap.org("org-real", slug="real", models=("chat", "embed"))
    key = snap.key("key-real", "org-real", limits={"tpm": 100_000, "max_tokens": 64})
    snap.model(
        "chat",
        [
            {
                "id": "vllm-chat-0",
                "url": root_of(vllm_chat),
                "api_key": vllm_chat.api_key,
                "model": vllm_chat.served_model_name,
                "external": False,
            }
        ],
        context_length=2048,
    )
    snap.model(
        "embed",
        [
            {
                "id": "vllm-embed-0",
                "url": root_of(vllm_embed),
                "api_key": vllm_embed.api_key,
                "model": vllm_embed.served_model_name,
                "external": False,
            }
        ],
        task="embedding",
        context_length=256,
    )
    snap.publish(redis_client)
    gw = start_gateway(first_byte_timeout=120.0, idle_timeout=60.0)
    gw.wait_version(snap.version)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=300)
    return client, redis_client


def test_chat_through_the_gateway(vllm_world):
    client, redis_client = vllm_world
    answer = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Hello there, how are you?"}],
        max_tokens=8,
        temperature=0,
    )
    assert answer.model == "chat"
    assert answer.usage.prompt_tokens > 0
    assert 0 < answer.usage.completion_tokens <= 8
    events = wait_for(lambda: usage_events(redis_client))
    assert events[-1]["prompt_tokens"] == answer.usage.prompt_tokens
    assert events[-1]["completion_tokens"] == answer.usage.completion_tokens
    assert events[-1]["replica"] == "vllm-chat-0"


def test_streaming_chat_counts_tokens(vllm_world):
    client, redis_client = vllm_world
    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "Count to five."}],
            max_tokens=8,
            stream=True,
        )
    )
    assert chunks and all(c.usage is None for c in chunks)  # the gateway's usage chunk is hidden
    events = wait_for(lambda: usage_events(redis_client))
    assert events[-1]["status"] == 200
    assert events[-1]["prompt_tokens"] > 0
    assert 0 < events[-1]["completion_tokens"] <= 8
    assert events[-1]["ttft_ms"] is not None


def test_max_tokens_cap_applies_before_vllm(vllm_world):
    client, _ = vllm_world
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}], max_tokens=65
        )
    assert info.value.response.json()["error"]["param"] == "max_tokens"


def test_embeddings_through_the_gateway(vllm_world):
    client, redis_client = vllm_world
    result = client.embeddings.create(
        model="embed", input=["a cat sits on the mat", "a kitten rests on a rug", "tax law"]
    )
    vectors = [d.embedding for d in result.data]
    assert len(vectors) == 3 and len(vectors[0]) == 384

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True)) / (
            math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
        )

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    events = wait_for(lambda: usage_events(redis_client))
    assert events[-1]["endpoint"] == "embeddings" and events[-1]["prompt_tokens"] > 0


def test_per_model_budget_with_exact_counts(vllm_chat, vllm_embed, redis_client, start_gateway):
    """A key allowed 1,000 tokens a day of the chat model and any amount of the embedding
    model: chat is served until its budget is used, then refused; embeddings are still
    served. Near the budget every prompt is counted by vLLM's /tokenize, and the counter
    matches vLLM's own usage exactly, never above the budget."""
    snap = SnapshotBuilder()
    snap.org("org-real", slug="real", models=("chat", "embed"))
    key = snap.key("key-pm", "org-real", model_limits={"chat": {"daily_tokens": 1000}})
    for alias, server, task, context in (
        ("chat", vllm_chat, "chat", 2048),
        ("embed", vllm_embed, "embedding", 256),
    ):
        route = {
            "id": f"vllm-{alias}-0",
            "url": root_of(server),
            "api_key": server.api_key,
            "model": server.served_model_name,
            "external": False,
        }
        snap.model(alias, [route], task=task, context_length=context)
    snap.publish(redis_client)
    gw = start_gateway(first_byte_timeout=120.0, idle_timeout=60.0)
    gw.wait_version(snap.version)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=300)
    messages = [{"role": "user", "content": "Write one long sentence about the sea. " * 8}]
    used = 0
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(40):
            answer = client.chat.completions.create(
                model="chat", messages=messages, max_tokens=16, temperature=0
            )
            used += answer.usage.total_tokens
    body = info.value.response.json()["error"]
    assert body["code"] == "budget_exceeded" and "for the model 'chat'" in body["message"]
    assert 0 < used <= 1000
    day = int(redis_client.time()[0]) // 86400
    # The refused request releases what it held in its settle, just after its answer.
    counter = f"sap:lim:key:key-pm:model:chat:d:{day}"
    assert wait_for(lambda: int(redis_client.get(counter)) == used), redis_client.get(counter)
    result = client.embeddings.create(model="embed", input=["served", "still"])
    assert len(result.data) == 2
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'gateway_prompt_counts_total{reason="daily_tokens"}' in metrics
    assert "gateway_prompt_count_failures_total 0.0" in metrics
