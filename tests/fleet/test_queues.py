"""Artifact fetches travel on their own Celery queue ("artifacts"), so a long download
never holds up node reports on "fleet"; Redis redelivers an unacknowledged task only
after the visibility timeout, longer than a fetch may take."""

from __future__ import annotations

import json

import pytest
import redis
from controlplane.catalog.services import create_model, create_version
from controlplane.celery import app
from controlplane.fleet.services import start_fetch
from django.conf import settings

from tests.conftest import SYSTEM


@pytest.fixture
def broker():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.mark.django_db
def test_a_fetch_is_queued_on_artifacts_not_fleet(
    world, broker, tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setenv("FLEET_MODEL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "m").mkdir()
    model = create_model(
        actor=SYSTEM,
        alias="local-m",
        task="chat",
        license_id="mit",
        commercial_use=True,
        openness="open-weights",
    )
    version = create_version(
        actor=SYSTEM,
        model=model,
        version="v1",
        source_type="local",
        local_path=str(tmp_path / "m"),
        context_length=128,
    )
    with django_capture_on_commit_callbacks(execute=True):
        fetch = start_fetch(actor=SYSTEM, version=version)
    assert broker.llen("fleet") == 0
    [raw] = broker.lrange("artifacts", 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == "fleet.fetch_artifact"
    assert message["headers"]["argsrepr"] == repr([str(fetch.pk)])


def test_fetches_are_routed_to_artifacts_by_default():
    assert app.amqp.router.route({}, "fleet.fetch_artifact")["queue"].name == "artifacts"
    assert app.amqp.router.route({}, "fleet.node_report")["queue"].name == "default"


def test_the_redis_transport_waits_six_hours_before_redelivering():
    with app.connection_for_write() as connection:
        assert connection.default_channel.visibility_timeout == 6 * 3600
