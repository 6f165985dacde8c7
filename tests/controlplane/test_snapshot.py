"""The control plane publishes what the gateway needs, on commit, never going back."""

from __future__ import annotations

import json

import pytest
import redis
from controlplane import snapshot
from controlplane.quotas.services import create_limit_policy
from controlplane.tenancy.services import create_api_key, revoke_api_key
from django.conf import settings
from django.db import connection

from gateway import contract
from tests.conftest import SYSTEM


@pytest.fixture
def r(world):
    # The test transaction never commits, so the world fixture's publish is still
    # queued; drop it so each test sees the callbacks its own changes queue.
    connection.run_on_commit.clear()
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def stored(r) -> dict:
    return json.loads(r.get(contract.SNAPSHOT_KEY))


def test_snapshot_holds_keys_orgs_and_models(world, r, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        key, secret = create_api_key(
            actor=SYSTEM, organization=world.org_a, name="k", scopes=["inference"]
        )
        create_limit_policy(actor=SYSTEM, organization=world.org_a, api_key=key, rpm=7)
        create_limit_policy(
            actor=SYSTEM, organization=world.org_a, api_key=key, model="tiny-chat", rpm=3
        )
        create_limit_policy(
            actor=SYSTEM, organization=world.org_a, model="tiny-chat", daily_tokens=1000
        )
        create_limit_policy(actor=SYSTEM, organization=world.org_b, rpm=9, fail_mode="open")
    assert len(callbacks) == 1  # one publish per transaction, however many changes
    data = stored(r)
    assert data["schema"] == contract.SNAPSHOT_SCHEMA
    entry = data["keys"][key.prefix]
    parsed = contract.parse_api_key(secret)
    assert contract.verify_api_key_secret(parsed.secret, entry["hash"], settings.API_KEY_PEPPER)
    assert entry["org"] == str(world.org_a.pk) and entry["limits"] == {"rpm": 7}
    assert entry["model_limits"] == {"tiny-chat": {"rpm": 3}}
    org = data["orgs"][str(world.org_a.pk)]
    assert org["limits"] == {} and org["model_limits"] == {"tiny-chat": {"daily_tokens": 1000}}
    assert org["limits_fail_mode"] is None
    assert data["orgs"][str(world.org_b.pk)]["limits_fail_mode"] == "open"
    assert org["models"] == ["tiny-chat"] and org["allow_external"] is False
    assert data["orgs"][str(world.org_b.pk)]["models"] == []
    assert data["models"]["tiny-chat"]["task"] == "chat"
    assert data["models"]["tiny-chat"]["context_length"] == 2048


def test_revocation_removes_the_key_and_notifies(world, r, django_capture_on_commit_callbacks):
    pubsub = r.pubsub()
    pubsub.subscribe(contract.SNAPSHOT_CHANNEL)
    pubsub.get_message(timeout=1)
    with django_capture_on_commit_callbacks(execute=True):
        key, _ = create_api_key(
            actor=SYSTEM, organization=world.org_a, name="k", scopes=["inference"]
        )
    connection.run_on_commit.clear()  # as a real commit would
    with django_capture_on_commit_callbacks(execute=True):
        revoke_api_key(actor=SYSTEM, key=key)
    assert key.prefix not in stored(r)["keys"]
    versions = []
    for _ in range(2):
        message = pubsub.get_message(timeout=2)
        versions.append(int(message["data"]))
    assert versions == sorted(versions) and versions[1] == stored(r)["version"]


def test_older_snapshot_never_replaces_newer(world, r, monkeypatch):
    assert snapshot.publish_snapshot(r)
    current = stored(r)
    # A slow publisher's build, older than what Redis holds (a version ahead of the
    # database itself starts a new epoch instead: test_snapshot_epoch.py).
    monkeypatch.setattr(snapshot, "build_snapshot", lambda: dict(current, version=1))
    assert not snapshot.publish_snapshot(r)
    assert stored(r) == current


def test_publish_failure_does_not_fail_the_change(
    world, settings, django_capture_on_commit_callbacks, monkeypatch
):
    def broken():
        raise redis.ConnectionError("down")

    monkeypatch.setattr("controlplane.redis.get_redis", broken)
    with django_capture_on_commit_callbacks(execute=True):
        key, _ = create_api_key(
            actor=SYSTEM, organization=world.org_a, name="k", scopes=["inference"]
        )
    assert key.pk
