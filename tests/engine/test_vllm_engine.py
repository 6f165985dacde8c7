"""The real inference engine (vLLM, CPU build) through the official OpenAI client.

These pin down what the gateway and the node agent rely on: the OpenAI wire format of
chat, streaming, completions and embeddings, API-key checks, and the open /health and
/metrics endpoints. Servers come from tests/support/vllm_fixtures.py.
"""

from __future__ import annotations

import math
import urllib.request

import openai
import pytest

from tests.support.vllm import RunningVllm

pytestmark = pytest.mark.slow

# The tiny model's weights are random, so its answers are noise: ignore_eos makes every
# answer exactly max_tokens long instead of stopping wherever EOS happens to be sampled.
FULL_LENGTH = {"ignore_eos": True}


def client_for(server: RunningVllm, api_key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.base_url,
        api_key=api_key or server.api_key,
        max_retries=0,
        timeout=60,
    )


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_lists_served_model(vllm_chat):
    models = client_for(vllm_chat).models.list()
    assert [model.id for model in models.data] == ["tiny-chat"]


def test_chat_completion(vllm_chat):
    response = client_for(vllm_chat).chat.completions.create(
        model="tiny-chat",
        messages=[
            {"role": "system", "content": "You are brief."},
            {"role": "user", "content": "Say hello to the platform team."},
        ],
        max_tokens=8,
        extra_body=FULL_LENGTH,
    )
    assert response.model == "tiny-chat"
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    assert response.usage.completion_tokens == 8
    assert response.usage.prompt_tokens > 10  # the chat template's tokens count too
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )


def test_greedy_chat_is_deterministic(vllm_chat):
    client = client_for(vllm_chat)

    def answer() -> str:
        response = client.chat.completions.create(
            model="tiny-chat",
            messages=[{"role": "user", "content": "Tell me about the gateway."}],
            max_tokens=12,
            temperature=0,
            extra_body=FULL_LENGTH,
        )
        return response.choices[0].message.content

    assert answer() == answer()


def test_streaming_chat_with_usage(vllm_chat):
    stream = client_for(vllm_chat).chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "Write a long story."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=FULL_LENGTH,
    )
    chunks = list(stream)

    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 3, "tokens should arrive in several chunks"
    assert all(chunk.id == chunks[0].id for chunk in chunks)
    finish_reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish_reasons[-1] == "length"
    # With include_usage the last chunk carries the usage and no choices.
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == 16
    assert last.usage.prompt_tokens > 0
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_completion(vllm_chat):
    response = client_for(vllm_chat).completions.create(
        model="tiny-chat",
        prompt="Once upon a time",
        max_tokens=8,
        extra_body=FULL_LENGTH,
    )
    assert response.object == "text_completion"
    assert isinstance(response.choices[0].text, str)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 8
    assert response.usage.prompt_tokens >= 4  # BOS + the prompt's tokens


def test_embeddings_are_meaningful(vllm_embed):
    sentences = [
        "A man is playing a guitar on stage.",
        "Someone performs music with a stringed instrument.",
        "The quarterly tax report is due next Tuesday.",
    ]
    response = client_for(vllm_embed).embeddings.create(model="minilm", input=sentences)
    vectors = [item.embedding for item in sorted(response.data, key=lambda d: d.index)]

    assert [len(vector) for vector in vectors] == [384, 384, 384]
    assert response.usage.prompt_tokens > 0
    # all-MiniLM-L6-v2 normalizes its output.
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-2 for v in vectors)
    related, unrelated = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])
    assert related > unrelated + 0.2, (related, unrelated)


@pytest.mark.parametrize("server_fixture", ["vllm_chat", "vllm_embed"])
def test_wrong_api_key_is_rejected(server_fixture, request):
    server = request.getfixturevalue(server_fixture)
    client = client_for(server, api_key="wrong-key")
    with pytest.raises(openai.AuthenticationError) as error:
        client.models.list()
    assert error.value.status_code == 401


def test_health_and_metrics_need_no_key(vllm_chat):
    # --api-key guards /v1 only: replica ports must be reachable by gateway and agent only.
    with urllib.request.urlopen(f"{vllm_chat.root_url}/health", timeout=10) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{vllm_chat.root_url}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ):
        assert name in metrics


def test_chat_and_embedding_servers_run_side_by_side(vllm_chat, vllm_embed, record_property):
    chat = client_for(vllm_chat).chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        extra_body=FULL_LENGTH,
    )
    embedding = client_for(vllm_embed).embeddings.create(model="minilm", input="Hi")
    assert chat.usage.completion_tokens == 4
    assert len(embedding.data[0].embedding) == 384

    for server in (vllm_chat, vllm_embed):
        memory = server.memory()
        record_property(f"{server.served_model_name}_startup_s", round(server.startup_seconds, 1))
        record_property(f"{server.served_model_name}_rss_bytes", memory["rss"])
        record_property(f"{server.served_model_name}_pss_bytes", memory["pss"])
        assert server.process.poll() is None
