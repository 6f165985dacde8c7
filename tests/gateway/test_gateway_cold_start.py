"""Scale from zero, the gateway's half: a request for an autoscaled model with no
ready replica is held (bounded, with a timeout) while a demand signal asks for one, and
answered once a snapshot brings a route; a client that gives up leaves nothing behind."""

from __future__ import annotations

import concurrent.futures
import threading

import httpx
import pytest

from gateway import contract
from tests.gateway.fakes import route, wait_for

MESSAGES = [{"role": "user", "content": "wake up"}]


@pytest.fixture
def sleepy(world):
    world.snap.org("org-acme", slug="acme", models=("sleepy", "chat-model"))
    world.snap.model("sleepy", [])
    world.snap.models["sleepy"]["cold_start"] = True
    world.redis.delete(contract.DEMAND_PREFIX + "sleepy")
    world.publish()
    return world


def chat(client, gw, key, stream=False):
    return client.post(
        gw.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "sleepy", "messages": MESSAGES, "stream": stream},
    )


def test_a_held_request_is_answered_once_a_replica_is_ready(
    start_gateway, sleepy, fake_a, upstream_urls
):
    gw = start_gateway()
    gw.wait_version(sleepy.snap.version)
    with concurrent.futures.ThreadPoolExecutor(2) as pool, httpx.Client(timeout=30) as client:
        pending = pool.submit(chat, client, gw, sleepy.key, True)
        # the demand signal is there, and the request still waits
        assert wait_for(lambda: sleepy.redis.get(contract.DEMAND_PREFIX + "sleepy"))
        assert wait_for(lambda: gw.app.services.cold_starts.waiting.get("sleepy") == 1)
        assert not pending.done() and fake_a.hits == 0
        sleepy.snap.model("sleepy", [route("a", upstream_urls["a"])])
        sleepy.snap.models["sleepy"]["cold_start"] = True
        sleepy.publish()
        response = pending.result(timeout=20)
    assert response.status_code == 200
    assert "data: [DONE]" in response.text
    assert fake_a.hits == 1
    assert gw.app.services.cold_starts.waiting == {}


def test_past_the_timeout_or_the_queue_bound_the_answer_is_503_with_retry_after(
    start_gateway, sleepy, http
):
    gw = start_gateway(cold_start_timeout=0.3)
    gw.wait_version(sleepy.snap.version)
    response = chat(http, gw, sleepy.key)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert response.json()["error"]["code"] == "cold_start"
    full = start_gateway(cold_start_queue=0)
    full.wait_version(sleepy.snap.version)
    response = chat(http, full, sleepy.key)
    assert response.status_code == 503 and "too many" in response.json()["error"]["message"]


def test_a_model_without_autoscaling_is_refused_at_once(start_gateway, sleepy, http):
    sleepy.snap.models["sleepy"].pop("cold_start")
    sleepy.publish()
    gw = start_gateway(cold_start_timeout=60)
    gw.wait_version(sleepy.snap.version)
    response = chat(http, gw, sleepy.key)
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_route"


def test_a_client_that_gives_up_leaves_no_work_behind(start_gateway, sleepy, fake_a, upstream_urls):
    gw = start_gateway()
    gw.wait_version(sleepy.snap.version)
    gave_up = threading.Event()

    def impatient():
        with httpx.Client(timeout=httpx.Timeout(30, read=0.5)) as client:
            try:
                chat(client, gw, sleepy.key, stream=True)
            except httpx.ReadTimeout:
                gave_up.set()

    thread = threading.Thread(target=impatient)
    thread.start()
    assert wait_for(lambda: gw.app.services.cold_starts.waiting.get("sleepy") == 1)
    thread.join(timeout=10)
    assert gave_up.is_set()
    # the gateway stops holding it once the connection is gone
    assert wait_for(lambda: "sleepy" not in gw.app.services.cold_starts.waiting)
    sleepy.snap.model("sleepy", [route("a", upstream_urls["a"])])
    sleepy.publish()
    gw.wait_version(sleepy.snap.version)
    assert fake_a.hits == 0
