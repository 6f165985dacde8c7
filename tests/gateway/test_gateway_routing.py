"""Cache- and load-aware routing (the default) through the real gateway, in front of
two fake upstreams: sessions stick to the replica holding their prefix, a hot prefix
spreads under the load bound, and in-flight counts are shared between gateway
processes through Redis."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from tests.gateway.fakes import route, wait_for


@pytest.fixture
def duo(world, upstream_urls):
    world.snap.org("org-acme", slug="acme", models=("duo",))
    world.snap.model("duo", [route("a", upstream_urls["a"]), route("b", upstream_urls["b"])])
    world.snap.publish(world.redis)
    return world


def ask(http, gw, key, messages):
    response = http.post(
        gw.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "duo", "messages": messages},
    )
    assert response.status_code == 200, response.text
    return response


def who(fake_a, fake_b, before):
    """Which fake took the one request sent since ``before`` (its hit counts)."""
    after = (fake_a.hits, fake_b.hits)
    assert sum(after) - sum(before) == 1
    return "a" if after[0] > before[0] else "b"


def test_sessions_stick_to_the_replica_with_their_prefix(start_gateway, duo, fake_a, fake_b, http):
    gw = start_gateway()  # the default policy, no setting
    gw.wait_version(duo.snap.version)
    homes: dict[int, set[str]] = {}
    for turn in range(4):
        for session in range(5):  # odd: round-robin alone would move sessions
            system = f"Session {session}: you advise on contract law for client {session}. " * 12
            messages = [{"role": "system", "content": system}]
            for t in range(turn + 1):
                messages.append({"role": "user", "content": f"question {t} of session {session}"})
            before = (fake_a.hits, fake_b.hits)
            ask(http, gw, duo.key, messages)
            homes.setdefault(session, set()).add(who(fake_a, fake_b, before))
    assert all(len(h) == 1 for h in homes.values()), homes  # every session on one replica
    assert {next(iter(h)) for h in homes.values()} == {"a", "b"}  # sessions spread


def test_a_hot_prefix_spreads_under_the_load_bound(start_gateway, duo, fake_a, fake_b):
    gw = start_gateway(load_bound=0.25)
    gw.wait_version(duo.snap.version)
    fake_a.first_byte_delay = fake_b.first_byte_delay = 0.5  # all 8 are in flight together
    hot = "You are the company-wide assistant. Follow the handbook. " * 20

    def one(i):
        with httpx.Client(timeout=20) as client:
            return ask(
                client,
                gw,
                duo.key,
                [{"role": "system", "content": hot}, {"role": "user", "content": f"u{i}"}],
            ).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == [200] * 8
    # affinity would send all 8 to one replica; the bound allows ceil(1.25 x 8 / 2) = 5
    assert fake_a.hits + fake_b.hits == 8
    assert max(fake_a.hits, fake_b.hits) <= 5, (fake_a.hits, fake_b.hits)


def test_in_flight_counts_are_shared_between_gateway_processes(
    start_gateway, duo, fake_a, fake_b, http
):
    busy = start_gateway(load_share_interval=0.05)
    other = start_gateway(load_share_interval=0.05)
    for gw in (busy, other):
        gw.wait_version(duo.snap.version)
    for _ in range(10):  # requests the first process holds on "a"
        busy.app.router.acquire("a")
    wait_for(lambda: other.app.router.remote_outstanding.get("a") == 10)
    for i in range(4):
        before = (fake_a.hits, fake_b.hits)
        ask(http, other, duo.key, [{"role": "user", "content": f"hello {i}"}])
        assert who(fake_a, fake_b, before) == "b"
    for _ in range(10):
        busy.app.router.release("a")
    wait_for(lambda: not other.app.router.remote_outstanding.get("a"))
