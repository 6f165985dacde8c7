"""End to end across the planes, on real components: the control plane
publishes a snapshot (keys, models, routes) into Redis, a real gateway process serves
the official ``openai`` client in front of real vLLM CPU servers, usage events land
in the ledger exactly once, and a revocation takes effect within a second."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import redis
from controlplane.catalog.services import (
    create_model,
    create_upstream,
    create_version,
    grant_model_access,
)
from controlplane.quotas.ledger import LedgerConsumer
from controlplane.quotas.models import UsageRecord
from controlplane.quotas.services import create_limit_policy
from controlplane.snapshot import publish_snapshot
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.services import create_api_key, create_organization, revoke_api_key
from django.conf import settings

from tests.support.vllm import free_port

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]
SYSTEM = Actor.system("integration test")


@pytest.fixture
def r():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def gateway(r, tmp_path):
    port = free_port()
    env = dict(
        os.environ,
        GATEWAY_PORT=str(port),
        GATEWAY_WORKERS="2",
        GATEWAY_REDIS_URL=settings.REDIS_URL,
        API_KEY_PEPPER=settings.API_KEY_PEPPER.decode(),
    )
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, (tmp_path / "gateway.log").read_text()
        assert time.monotonic() < deadline, "gateway did not get ready"
        time.sleep(0.2)
    yield base
    os.killpg(process.pid, 15)
    process.wait(timeout=20)


@pytest.fixture
def platform_world(vllm_chat, vllm_embed, r):
    org = create_organization(actor=SYSTEM, slug="acme", name="Acme")
    chat = create_model(
        actor=SYSTEM,
        alias="tiny-chat",
        task="chat",
        license_id="apache-2.0",
        commercial_use=True,
        openness="open-weights",
    )
    create_version(
        actor=SYSTEM,
        model=chat,
        version="v1",
        source_type="local",
        local_path="/models/tiny-chat",
        context_length=2048,
    )
    create_upstream(
        actor=SYSTEM,
        model=chat,
        name="cpu-1",
        base_url=vllm_chat.base_url.removesuffix("/v1"),
        served_model_name=vllm_chat.served_model_name,
        api_key=vllm_chat.api_key,
    )
    embed = create_model(
        actor=SYSTEM,
        alias="minilm",
        task="embedding",
        license_id="apache-2.0",
        commercial_use=True,
        openness="open-source",
    )
    create_upstream(
        actor=SYSTEM,
        model=embed,
        name="cpu-1",
        base_url=vllm_embed.base_url.removesuffix("/v1"),
        served_model_name=vllm_embed.served_model_name,
        api_key=vllm_embed.api_key,
    )
    for model in (chat, embed):
        grant_model_access(actor=SYSTEM, organization=org, model=model)
    key, secret = create_api_key(actor=SYSTEM, organization=org, name="app", scopes=["inference"])
    create_limit_policy(actor=SYSTEM, organization=org, api_key=key, rpm=1000, max_tokens=64)
    publish_snapshot(r)  # what on_commit does in production
    return org, key, secret


def test_openai_client_through_gateway_to_vllm(platform_world, gateway, r):
    org, key, secret = platform_world
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=secret, max_retries=0)

    assert {m.id for m in client.models.list().data} == {"tiny-chat", "minilm"}
    chat = client.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=8,
        extra_body={"ignore_eos": True},
    )
    assert chat.choices[0].message.content and chat.usage.completion_tokens == 8
    chunks = list(
        client.chat.completions.create(
            model="tiny-chat",
            messages=[{"role": "user", "content": "stream"}],
            max_tokens=8,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    embedding = client.embeddings.create(model="minilm", input=["a cat", "a kitten"])
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError):  # over the key's max_tokens cap
        client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "x"}], max_tokens=500
        )

    # Every request above is in the ledger once, with the upstream's token counts.
    consumer = LedgerConsumer(r, name="it")
    deadline = time.monotonic() + 10
    while UsageRecord.objects.count() < 4 and time.monotonic() < deadline:
        consumer.run_once(block=False)
        time.sleep(0.1)
    records = list(UsageRecord.objects.order_by("occurred_at"))
    assert len(records) == 4
    assert all(rec.organization_id == org.pk and rec.api_key_id == key.pk for rec in records)
    assert [rec.status for rec in records] == [200, 200, 200, 400]
    assert records[0].completion_tokens == 8 and records[0].prompt_tokens > 0
    assert records[1].completion_tokens == 8  # the stream's usage chunk was counted
    assert records[2].endpoint == "embeddings" and records[2].prompt_tokens > 0

    # Revocation in the control plane reaches the gateway within a second.
    revoke_api_key(actor=SYSTEM, key=key)
    publish_snapshot(r)
    time.sleep(1.0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
