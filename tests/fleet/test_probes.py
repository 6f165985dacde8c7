"""The control plane's probes and metrics (/healthz, /readyz, /metrics): answered for
any Host (Kubernetes probes come by pod IP), ready only with database, Redis and every
migration applied, and metrics computed from the database and Redis at scrape time."""

from __future__ import annotations

import pytest
import redis
from controlplane import probes
from controlplane.fleet.models import Replica
from controlplane.fleet.services import create_deployment, create_node
from controlplane.quotas.ledger import DEAD_LETTER_STREAM, ensure_group
from controlplane.redis import get_redis
from django.conf import settings
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from gateway import contract
from tests.conftest import SYSTEM

pytestmark = pytest.mark.django_db
POD_IP = "10.244.3.17"  # not in ALLOWED_HOSTS


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    probes.readiness.reset()
    yield client
    probes.readiness.reset()
    get_redis.cache_clear()
    client.flushdb()


def samples(text: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_probes_answer_any_host_while_other_paths_still_check_it(client):
    response = client.get("/healthz", HTTP_HOST=POD_IP)
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    response = client.get("/readyz", HTTP_HOST=POD_IP)
    assert response.status_code == 200, response.content
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "migrations": "ok"}
    assert client.get("/metrics", HTTP_HOST=POD_IP).status_code == 200
    assert client.get("/api/v1/schema/", HTTP_HOST=POD_IP).status_code == 400
    assert client.post("/readyz", HTTP_HOST=POD_IP).status_code == 405


def test_not_ready_without_redis_and_ready_again_after_the_cache(client, settings):
    original = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    get_redis.cache_clear()
    response = client.get("/readyz", HTTP_HOST=POD_IP)
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["redis"] != "ok" and checks["database"] == "ok"
    settings.REDIS_URL = original
    get_redis.cache_clear()
    # The verdict is kept for a while, so probes never hammer the stores ...
    assert client.get("/readyz", HTTP_HOST=POD_IP).status_code == 503
    probes.readiness.reset()  # ... and taken afresh once it is old
    assert client.get("/readyz", HTTP_HOST=POD_IP).status_code == 200


def test_not_ready_with_an_unapplied_migration(client):
    with connection.cursor() as cursor:  # rolled back with the test's transaction
        cursor.execute("DELETE FROM django_migrations WHERE app = 'fleet'")
    response = client.get("/readyz", HTTP_HOST=POD_IP)
    assert response.status_code == 503
    assert "not applied" in response.json()["checks"]["migrations"]


def test_metrics_count_nodes_replicas_lag_and_dead_letters(client, world, sized_model, fresh):
    from controlplane.fleet.services import create_pool

    pool = create_pool(actor=SYSTEM, name="gpu")
    create_node(actor=SYSTEM, name="gpu-1", pool=pool, address="10.0.0.1")
    create_node(actor=SYSTEM, name="gpu-2", pool=pool, address="10.0.0.2")
    deployment = create_deployment(
        actor=SYSTEM, organization=world.org_a, name="chat", model="tiny-chat", pool=pool
    )
    for state in ("ready", "ready", "failed"):
        Replica.objects.create(deployment=deployment, spec_hash=deployment.spec_hash, state=state)
    ensure_group(fresh)
    for n in range(3):
        fresh.xadd(contract.USAGE_STREAM, {"event": f"e{n}"})
    fresh.xreadgroup(contract.USAGE_GROUP, "ledger-1", {contract.USAGE_STREAM: ">"}, count=1)
    fresh.xadd(DEAD_LETTER_STREAM, {"event": "bad", "reason": "test", "id": "1-0"})

    response = client.get("/metrics", HTTP_HOST=POD_IP)
    assert response.status_code == 200
    found = samples(response.content.decode())
    assert found[("platform_nodes", (("state", "lost"),))] == 2
    assert found[("platform_nodes", (("state", "ready"),))] == 0
    assert found[("platform_replicas", (("state", "ready"),))] == 2
    assert found[("platform_replicas", (("state", "failed"),))] == 1
    assert found[("platform_usage_stream_lag", ())] == 2
    assert found[("platform_usage_stream_pending", ())] == 1
    assert found[("platform_usage_dead_letters", ())] == 1
    assert found[("platform_scrape_error", (("source", "redis"),))] == 0


def test_metrics_survive_a_redis_outage(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    get_redis.cache_clear()
    response = client.get("/metrics", HTTP_HOST=POD_IP)
    assert response.status_code == 200
    found = samples(response.content.decode())
    assert found[("platform_scrape_error", (("source", "redis"),))] == 1
    assert found[("platform_scrape_error", (("source", "database"),))] == 0
    assert ("platform_nodes", (("state", "lost"),)) in found
