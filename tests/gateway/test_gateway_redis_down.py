"""Redis goes away: the gateway keeps serving from the snapshot in memory, refuses
(or, if configured, admits) requests whose limits it cannot check, buffers usage
events and delivers them once Redis is back."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from gateway import contract
from tests.gateway.fakes import DisposableRedis, SnapshotBuilder, route, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def own_redis():
    server = DisposableRedis()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def keys(own_redis, upstream_urls):
    snap = SnapshotBuilder()
    snap.org("org-1", slug="one", models=("chat-model",))
    free = snap.key("k-free", "org-1")
    limited = snap.key("k-limited", "org-1", limits={"rpm": 1000})
    snap.model("chat-model", [route("a", upstream_urls["a"])])
    snap.publish(own_redis.client())
    return free, limited


def chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "chat-model", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )


@pytest.fixture
def gateway_on(own_redis, keys, start_gateway):
    def start(**overrides):
        gw = start_gateway(redis_url=own_redis.url, redis_timeout=0.3, **overrides)
        gw.wait_version(1)
        return gw

    return start


def test_serves_from_memory_and_fails_closed(own_redis, keys, gateway_on, fake_a):
    free, limited = keys
    gw = gateway_on()
    assert chat(gw.url, free).status_code == 200
    assert chat(gw.url, limited).status_code == 200
    assert wait_for(lambda: own_redis.client().xlen(contract.USAGE_STREAM) == 2)

    own_redis.kill()
    # No limits to check: served from the snapshot in memory.
    for _ in range(3):
        assert chat(gw.url, free).status_code == 200
    # Limits cannot be checked: refused with a clear message (default fail mode).
    r = chat(gw.url, limited)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "limits_unavailable"
    assert "cannot be checked" in r.json()["error"]["message"]
    assert r.headers["retry-after"] == "1"
    assert httpx.get(gw.url + "/readyz").status_code == 200  # the snapshot is still loaded
    usage = gw.app.services.usage
    assert wait_for(lambda: len(usage.buffer) == 4)  # 3 served + 1 refused, all authenticated
    metrics = httpx.get(gw.url + "/metrics").text
    assert "gateway_usage_events_buffered 4.0" in metrics

    own_redis.start()  # an empty Redis on the same port
    client = own_redis.client()
    assert wait_for(lambda: client.xlen(contract.USAGE_STREAM) == 4, timeout=10)
    events = [orjson.loads(f[b"event"]) for _, f in client.xrange(contract.USAGE_STREAM)]
    assert [e["status"] for e in events] == [200, 200, 200, 503]
    assert not usage.buffer
    assert wait_for(lambda: chat(gw.url, limited).status_code == 200, timeout=5)


def test_fail_open_admits_when_limits_are_unreachable(own_redis, keys, gateway_on, fake_a):
    _, limited = keys
    gw = gateway_on(limits_fail_mode="open")
    own_redis.kill()
    r = chat(gw.url, limited)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Hello from a"
    assert wait_for(lambda: len(gw.app.services.usage.buffer) == 1)


def test_starts_without_redis_and_becomes_ready_when_it_appears(own_redis, keys, start_gateway):
    free, _ = keys
    snapshot = own_redis.client().get(contract.SNAPSHOT_KEY)
    own_redis.kill()
    gw = start_gateway(redis_url=own_redis.url, redis_timeout=0.3)
    assert httpx.get(gw.url + "/readyz").status_code == 503
    assert chat(gw.url, free).status_code == 401  # nothing known yet: nobody gets in
    own_redis.start()
    own_redis.client().set(contract.SNAPSHOT_KEY, snapshot)
    assert wait_for(lambda: httpx.get(gw.url + "/readyz").status_code == 200, timeout=5)
    time.sleep(0.1)
    assert chat(gw.url, free).status_code == 200


def test_usage_buffer_is_bounded(own_redis, keys, gateway_on, fake_a):
    free, _ = keys
    gw = gateway_on(usage_buffer_max=2)
    own_redis.kill()
    for _ in range(4):
        assert chat(gw.url, free).status_code == 200
    assert wait_for(
        lambda: "gateway_usage_events_dropped_total 2.0" in httpx.get(gw.url + "/metrics").text
    )
    assert len(gw.app.services.usage.buffer) == 2


def test_fail_mode_is_set_per_organization(own_redis, upstream_urls, start_gateway, fake_a):
    """The gateway fails closed by default; an organization set to fail open is admitted
    against this process's share of each of its limits, and refused past it."""
    snap = SnapshotBuilder()
    snap.org("org-open", slug="open", models=("chat-model",))
    snap.orgs["org-open"]["limits_fail_mode"] = "open"
    snap.org("org-closed", slug="closed", models=("chat-model",))
    open_key = snap.key("k-open", "org-open", limits={"rpm": 6, "daily_tokens": 10**6})
    closed_key = snap.key("k-closed", "org-closed", limits={"rpm": 6})
    snap.model("chat-model", [route("a", upstream_urls["a"])])
    snap.publish(own_redis.client())
    gw = start_gateway(redis_url=own_redis.url, redis_timeout=0.3, fail_open_share=0.5)
    gw.wait_version(1)
    own_redis.kill()
    r = chat(gw.url, closed_key)
    assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
    # Half of rpm 6 in this process: 3 served, then a 429 naming the limit.
    assert [chat(gw.url, open_key).status_code for _ in range(3)] == [200, 200, 200]
    r = chat(gw.url, open_key)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert "requests per minute of the key (3)" in r.json()["error"]["message"]


def test_settles_in_flight_are_journaled_on_disk_and_replayed_once(
    own_redis, upstream_urls, start_gateway, fake_a, tmp_path
):
    """Redis dies with requests in flight: their settles (token deltas, slot releases,
    usage events) go to the journal file; Redis comes back empty and each is replayed
    exactly once, in order; a replay of one already applied changes nothing."""
    import asyncio
    import threading

    from gateway.limits import Limiter
    from gateway.resp import ScriptClient

    snap = SnapshotBuilder()
    snap.org("org-1", slug="one", models=("chat-model",))
    key = snap.key("k-conc", "org-1", limits={"concurrency": 20})
    snap.model("chat-model", [route("a", upstream_urls["a"])])
    snap.publish(own_redis.client())
    gw = start_gateway(redis_url=own_redis.url, redis_timeout=0.3, journal_dir=str(tmp_path))
    gw.wait_version(1)
    fake_a.first_byte_delay = 3.0  # all 8 still waiting on the upstream when Redis dies
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(chat(gw.url, key).status_code))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    assert wait_for(lambda: fake_a.hits == 8)  # all 8 admitted and upstream
    own_redis.kill()
    for t in threads:
        t.join()
    assert statuses == [200] * 8
    usage = gw.app.services.usage
    assert wait_for(lambda: len(usage.buffer) == 8)  # settled after the answers went out
    (journal,) = tmp_path.glob("settle-*.jsonl")
    entries = [orjson.loads(line) for line in journal.read_bytes().splitlines()]
    assert len(entries) == 8
    metrics = httpx.get(gw.url + "/metrics").text
    assert "gateway_usage_events_buffered 8.0" in metrics
    assert "gateway_settle_journal_oldest_seconds" in metrics

    own_redis.start()  # empty
    client = own_redis.client()
    assert wait_for(lambda: client.xlen(contract.USAGE_STREAM) == 8, timeout=10)
    assert wait_for(lambda: not usage.buffer and journal.read_bytes() == b"")
    events = [orjson.loads(f[b"event"]) for _, f in client.xrange(contract.USAGE_STREAM)]
    assert len({e["request_id"] for e in events}) == 8
    assert client.zcard(f"{contract.LIMITS_PREFIX}key:k-conc:conc") == 0

    async def replay_again():
        scripts = ScriptClient(own_redis.url, timeout=2.0)
        try:
            return await Limiter(scripts, 60.0, 1000).run_settle(entries[0]["args"])
        finally:
            await scripts.aclose()

    assert asyncio.run(replay_again()) is False
    assert client.xlen(contract.USAGE_STREAM) == 8


def test_a_new_process_takes_over_the_journal_of_a_dead_one(tmp_path):
    from gateway.usage import SettleJournal

    dead = SettleJournal(str(tmp_path), 10)
    dead.add(["m1", 1])
    dead.add(["m2", 2])
    dead._file.close()  # the process died: its lock is gone, its file stays
    alive = SettleJournal(str(tmp_path), 10)
    assert [e["args"] for e in alive.entries] == [["m1", 1], ["m2", 2]]
    # A live process's journal is never taken.
    third = SettleJournal(str(tmp_path), 10)
    assert len(third) == 0
    alive.close()
    third.close()
