"""Capacity belongs to its owner: a replica of an organization's deployment serves only
that organization; a platform deployment serves the organizations it is shared with.
The gateway prefers the caller's own routes, falls back to shared ones, answers 503
naming the model when there is none, and names the capacity's owner in the usage event
and the metrics. A real gateway (uvicorn) in front of fake upstreams, with the official
``openai`` client."""

from __future__ import annotations

import httpx
import openai
import pytest

from gateway import contract
from gateway.policy import split_by_owner
from gateway.routing import Router
from tests.gateway.fakes import SnapshotBuilder, route, usage_events, wait_for

MESSAGES = [{"role": "user", "content": "Say hello"}]
ORG_A, ORG_B, ORG_C = "org-a", "org-b", "org-c"


def owned(route_id: str, url: str, owner: str | None, orgs: list[str] | None) -> contract.Route:
    return {**route(route_id, url), "owner": owner, "orgs": orgs}


# --------------------------------------------------------------------------- units
def test_split_by_owner_keeps_only_own_and_shared_capacity():
    routes = [
        owned("a1", "http://a", ORG_A, [ORG_A]),
        owned("b1", "http://b", ORG_B, [ORG_B]),
        owned("p-b", "http://p", None, [ORG_B]),
        owned("p-none", "http://p", None, []),
        owned("p-all", "http://p", None, None),
        route("legacy", "http://l"),  # written before the fields existed: platform, all
        # Inconsistent (owned by A yet listing B): B may not use another's capacity.
        owned("a-odd", "http://a", ORG_A, [ORG_A, ORG_B]),
    ]
    own, shared = split_by_owner(routes, ORG_B)
    assert [r["id"] for r in own] == ["b1"]
    assert [r["id"] for r in shared] == ["p-b", "p-all", "legacy"]
    own, shared = split_by_owner(routes, ORG_C)
    assert own == [] and [r["id"] for r in shared] == ["p-all", "legacy"]


def test_order_tiers_prefers_own_routes_and_falls_back_to_shared():
    now = [0.0]
    router = Router(eject_after_failures=1, eject_seconds=10, clock=lambda: now[0])
    own = [owned("own-1", "http://o1", ORG_B, [ORG_B]), owned("own-2", "http://o2", ORG_B, None)]
    shared = [owned("shared", "http://s", None, None)]
    for _ in range(4):
        order = [r["id"] for r in router.order_tiers("m", [own, shared], None)]
        assert set(order[:2]) == {"own-1", "own-2"} and order[2] == "shared"
    router.record_failure("own-1")
    assert [r["id"] for r in router.order_tiers("m", [own, shared], None)] == ["own-2", "shared"]
    router.record_failure("own-2")  # no own route healthy: the shared one
    assert [r["id"] for r in router.order_tiers("m", [own, shared], None)] == ["shared"]
    router.record_failure("shared")  # all ejected: panic mode over every route
    assert {r["id"] for r in router.order_tiers("m", [own, shared], None)} == {
        "own-1",
        "own-2",
        "shared",
    }
    assert router.order_tiers("m", [[], []], None) == []


# --------------------------------------------------------------------------- end to end
@pytest.fixture
def capacity(redis_client, upstream_urls, upstreams, start_gateway):
    """Org A owns a replica on fake ``a``; org B owns one on fake ``b``; a platform
    deployment on fake ``c`` is shared with B only. Both may use both models."""
    for fake, _ in upstreams.values():
        fake.reset()
    snap = SnapshotBuilder()
    for org_id, slug in ((ORG_A, "alpha"), (ORG_B, "beta"), (ORG_C, "gamma")):
        snap.org(org_id, slug=slug, models=("chat-model", "solo-model"))
    snap.model(
        "chat-model",
        [
            owned("replica-a", upstream_urls["a"], ORG_A, [ORG_A]),
            owned("replica-b", upstream_urls["b"], ORG_B, [ORG_B]),
            owned("replica-p", upstream_urls["c"], None, [ORG_B]),
        ],
    )
    snap.model("solo-model", [owned("replica-a-solo", upstream_urls["a"], ORG_A, [ORG_A])])
    keys = {org: snap.key(f"key-{org}", org) for org in (ORG_A, ORG_B, ORG_C)}
    snap.publish(redis_client)
    gw = start_gateway(eject_after_failures=1)
    gw.wait_version(snap.version)
    fakes = {name: fake for name, (fake, _) in upstreams.items()}
    clients = {
        org: openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20)
        for org, key in keys.items()
    }
    return snap, gw, fakes, clients


def chat(client: openai.OpenAI, model: str = "chat-model"):
    return client.chat.completions.create(model=model, messages=MESSAGES)


def test_requests_go_only_to_own_capacity_first(capacity, redis_client):
    _snap, _gw, fakes, clients = capacity
    for _ in range(5):
        chat(clients[ORG_B])
    assert fakes["b"].hits == 5
    assert fakes["a"].hits == 0 and fakes["c"].hits == 0  # A's replica gets nothing
    for _ in range(3):
        chat(clients[ORG_A])
    assert fakes["a"].hits == 3 and fakes["c"].hits == 0  # not shared with A
    events = wait_for(lambda: len(usage_events(redis_client)) == 8 and usage_events(redis_client))
    assert [(e["org"], e["replica"], e["owner"]) for e in events] == [
        *[(ORG_B, "replica-b", ORG_B)] * 5,
        *[(ORG_A, "replica-a", ORG_A)] * 3,
    ]


def test_shared_platform_capacity_when_no_own_route_is_healthy(capacity, redis_client):
    _snap, gw, fakes, clients = capacity
    fakes["b"].fail_status = 503
    # B's own replica fails: the retry goes to the platform deployment shared with B,
    # never to A's replica; B's replica is ejected, so the next one goes there directly.
    chat(clients[ORG_B])
    chat(clients[ORG_B])
    assert fakes["b"].hits == 1 and fakes["c"].hits == 2 and fakes["a"].hits == 0
    events = wait_for(lambda: len(usage_events(redis_client)) == 2 and usage_events(redis_client))
    assert [(e["org"], e["replica"], e["owner"]) for e in events] == [
        (ORG_B, "replica-p", None),
        (ORG_B, "replica-p", None),
    ]
    metrics = gw_metrics(gw)
    assert (
        'gateway_capacity_requests_total{model="chat-model",org="beta",owner="platform"} 2.0'
        in (metrics)
    )


def test_no_capacity_is_503_naming_the_model(capacity, redis_client):
    _snap, gw, fakes, clients = capacity
    # C may use the model but owns no deployment of it and none is shared with it.
    with pytest.raises(openai.InternalServerError) as info:
        chat(clients[ORG_C])
    with pytest.raises(openai.InternalServerError) as solo:
        chat(clients[ORG_B], model="solo-model")
    for err, model in ((info.value, "chat-model"), (solo.value, "solo-model")):
        assert err.status_code == 503
        body = err.response.json()["error"]
        assert body["code"] == "no_route" and body["type"]
        assert f"'{model}'" in body["message"]
        assert "organization has no deployment" in body["message"]
    assert fakes["a"].hits == 0 and fakes["b"].hits == 0 and fakes["c"].hits == 0
    events = wait_for(lambda: len(usage_events(redis_client)) == 2 and usage_events(redis_client))
    assert [(e["status"], e["replica"], e["owner"]) for e in events] == [(503, None, None)] * 2
    chat(clients[ORG_A], model="solo-model")  # its owner is served
    assert fakes["a"].hits == 1
    assert (
        'gateway_capacity_requests_total{model="solo-model",org="alpha",owner="alpha"} 1.0'
        in gw_metrics(gw)
    )


def gw_metrics(gw) -> str:
    return httpx.get(gw.url + "/metrics").text
