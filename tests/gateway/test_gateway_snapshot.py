"""The snapshot watcher: newer versions only, bad documents ignored, notices and polls."""

from __future__ import annotations

import time

import httpx
import orjson

from gateway import contract
from tests.gateway.fakes import wait_for


def test_only_a_newer_version_is_applied(gateway, world):
    assert gateway.app.snapshots.current.version == 1
    world.snap.version = 10
    world.publish()  # version 11
    gateway.wait_version(11)
    # An older document (a late publisher) must not win.
    world.snap.version = 4
    world.snap.entry("key-1")["revoked"] = True
    world.publish()  # version 5
    time.sleep(0.6)  # several polls and the notice
    assert gateway.app.snapshots.current.version == 11
    assert (
        httpx.get(
            gateway.url + "/v1/models", headers={"Authorization": f"Bearer {world.key}"}
        ).status_code
        == 200
    )


def test_malformed_or_foreign_snapshots_are_ignored(gateway, world):
    world.redis.set(contract.SNAPSHOT_KEY, b"{not json")
    world.redis.publish(contract.SNAPSHOT_CHANNEL, "99")
    foreign = world.snap.build()
    foreign["schema"] = 99
    world.redis.set(contract.SNAPSHOT_KEY, orjson.dumps(foreign))
    world.redis.publish(contract.SNAPSHOT_CHANNEL, str(foreign["version"]))
    time.sleep(0.6)
    assert gateway.app.snapshots.current.version == 1
    assert httpx.get(gateway.url + "/readyz").json() == {"status": "ready", "snapshot_version": 1}
    world.publish()
    assert wait_for(lambda: gateway.app.snapshots.current.version == world.snap.version)


def test_sorted_key_publishers_are_polled_too(gateway, world):
    """A publisher that sorts keys puts ``version`` last; the cheap poll reads the tail."""
    snapshot = world.snap.build()
    world.redis.set(contract.SNAPSHOT_KEY, orjson.dumps(snapshot, option=orjson.OPT_SORT_KEYS))
    assert wait_for(lambda: gateway.app.snapshots.current.version == snapshot["version"], timeout=3)


def test_healthz_and_metrics_version(gateway, world, http):
    assert http.get(gateway.url + "/healthz").json() == {"status": "ok"}
    assert "gateway_snapshot_version 1.0" in http.get(gateway.url + "/metrics").text
    r = http.get(gateway.url + "/v2/unknown")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = http.get(gateway.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
