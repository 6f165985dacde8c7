"""A Redis snapshot version ahead of the database (restored backup, tampering) must not
stop publishing: the publisher starts a new epoch and a running gateway applies it, so
a key revoked afterwards is refused at once."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
import redis
from controlplane import snapshot
from controlplane.tenancy.services import create_api_key, revoke_api_key
from django.conf import settings
from django.db import connection

from gateway import contract
from gateway.app import create_app
from gateway.settings import Settings
from gateway.snapshot import CompiledSnapshot, SnapshotHolder, peek_epoch, peek_version
from tests.conftest import SYSTEM
from tests.gateway.fakes import ServerThread


@pytest.fixture
def r(world):
    connection.run_on_commit.clear()  # the world fixture's publish, never committed
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def stored(r) -> dict:
    return json.loads(r.get(contract.SNAPSHOT_KEY))


@pytest.fixture
def gateway(r):
    """A gateway on this Redis that notices changes by pub/sub only (its poll, the
    safety net, is slower than the test's deadline)."""
    app = create_app(
        Settings(
            api_key_pepper=settings.API_KEY_PEPPER,
            redis_url=settings.REDIS_URL,
            snapshot_poll_interval=60.0,
            access_log=False,
        )
    )
    server = ServerThread(app).start()
    yield app, server.url
    server.stop()


def status_with(url: str, key: str) -> int:
    return httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


@pytest.mark.parametrize("restored", ["version_key", "whole_snapshot"])
def test_version_ahead_of_database_starts_a_new_epoch_and_revocation_reaches_gateway(
    world, r, gateway, django_capture_on_commit_callbacks, caplog, restored
):
    app, url = gateway
    with django_capture_on_commit_callbacks(execute=True):
        key, secret = create_api_key(
            actor=SYSTEM, organization=world.org_a, name="k", scopes=["inference"]
        )
    connection.run_on_commit.clear()
    first = stored(r)
    deadline = time.monotonic() + 10
    while app.snapshots.current.version != first["version"]:
        assert time.monotonic() < deadline, "the gateway never loaded the snapshot"
        time.sleep(0.02)
    assert status_with(url, secret) == 200

    r.set(contract.SNAPSHOT_VERSION_KEY, 10**15)  # tampering, or a restored backup
    if restored == "whole_snapshot":
        # Redis restored from a backup "ahead" of the database: the gateway loads it,
        # and every later snapshot of this database has a lower version.
        r.set(contract.SNAPSHOT_KEY, json.dumps(dict(first, version=10**15)))
        r.publish(contract.SNAPSHOT_CHANNEL, str(10**15))
        while app.snapshots.current.version != 10**15:
            assert time.monotonic() < deadline, "the gateway never loaded the restored one"
            time.sleep(0.02)
    with caplog.at_level(logging.ERROR, logger="controlplane.snapshot"):
        with django_capture_on_commit_callbacks(execute=True):
            revoke_api_key(actor=SYSTEM, key=key)
        revoked_at = time.monotonic()
    assert "ahead of the database" in caplog.text
    data = stored(r)
    assert key.prefix not in data["keys"]
    assert data["epoch"] and data["epoch"] != first["epoch"]
    assert first["version"] < data["version"] < 10**15
    assert int(r.get(contract.SNAPSHOT_VERSION_KEY)) == data["version"]
    assert r.get(contract.SNAPSHOT_EPOCH_KEY).decode() == data["epoch"]

    while status_with(url, secret) != 401:
        assert time.monotonic() - revoked_at < 1.0, "the gateway still accepts the key"
        time.sleep(0.01)
    assert app.snapshots.current.epoch == data["epoch"]

    # The next change publishes normally, in the new epoch.
    connection.run_on_commit.clear()
    with django_capture_on_commit_callbacks(execute=True):
        create_api_key(actor=SYSTEM, organization=world.org_a, name="k2", scopes=["inference"])
    later = stored(r)
    assert later["epoch"] == data["epoch"] and later["version"] > data["version"]


def test_a_newer_build_of_this_database_is_not_mistaken_for_tampering(world, r, monkeypatch):
    assert snapshot.publish_snapshot(r)
    current = stored(r)
    older = dict(current, version=current["version"] - 1)
    monkeypatch.setattr(snapshot, "build_snapshot", lambda: dict(older))
    assert not snapshot.publish_snapshot(r)  # a slow publisher: refused, no new epoch
    assert stored(r) == current and r.get(contract.SNAPSHOT_EPOCH_KEY) is None


def test_gateway_holder_applies_another_epoch_even_with_a_lower_version():
    holder = SnapshotHolder()

    def snap(version, epoch=None):
        data = contract.empty_snapshot()
        data["version"] = version
        if epoch is None:
            del data["epoch"]  # a publisher from before epochs
        else:
            data["epoch"] = epoch
        return CompiledSnapshot(data)

    assert holder.apply(snap(50))
    assert not holder.apply(snap(40)) and not holder.apply(snap(50, ""))
    assert holder.apply(snap(7, "e1"))
    assert holder.current.version == 7 and holder.current.epoch == "e1"
    assert not holder.apply(snap(6, "e1"))
    assert holder.apply(snap(8, "e1"))


def test_poll_peeks_at_the_epoch():
    data = contract.empty_snapshot()
    data["version"], data["epoch"] = 12, "1700000000-abcd"
    raw = json.dumps(data, separators=(",", ":")).encode()
    assert peek_version(raw[:160], raw[-160:]) == 12
    assert peek_epoch(raw[:160], raw[-160:]) == "1700000000-abcd"
    assert peek_epoch(b'{"schema":1,"version":3,"keys":{}}', None) is None


def test_the_version_poll_notices_a_new_epoch(settings):
    """The poll (the safety net for a missed notice) reloads on another epoch even when
    the version it peeks at is lower."""
    import asyncio

    import redis.asyncio as aioredis

    from gateway.snapshot import SnapshotWatcher

    async def scenario() -> None:
        client = aioredis.from_url(settings.REDIS_URL)
        await client.delete(contract.SNAPSHOT_KEY)
        holder = SnapshotHolder()
        restored = contract.empty_snapshot()
        restored["version"] = 10**15
        assert holder.apply(CompiledSnapshot(restored))
        fresh = contract.empty_snapshot()
        fresh["version"], fresh["epoch"] = 5, "1700000000-beef"
        await client.set(contract.SNAPSHOT_KEY, json.dumps(fresh, separators=(",", ":")))
        watcher = SnapshotWatcher(client, holder, poll_interval=0.05)
        task = asyncio.create_task(watcher._poll())
        try:
            async with asyncio.timeout(5):
                while holder.current.epoch != fresh["epoch"]:
                    await asyncio.sleep(0.02)
            assert holder.current.version == 5
        finally:
            watcher._stopping = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.delete(contract.SNAPSHOT_KEY)
            await client.aclose()

    asyncio.run(scenario())
