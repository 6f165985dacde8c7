"""Fault injection: a gateway (in a thread) in front of fake upstreams that fail on
command. Retries before the first byte, none after it, ejection and recovery,
first-byte and idle timeouts, and the SSE error event of a broken stream."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import orjson
import pytest

from tests.gateway.fakes import free_port, route, usage_events, wait_for

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def duo(world, upstream_urls):
    """Model "duo" served by fakes a and b; "dead-first" by a closed port then b."""
    world.snap.org(
        "org-acme",
        slug="acme",
        models=("chat-model", "duo", "dead-first", "all-dead", "all-failing"),
    )
    dead = f"http://127.0.0.1:{free_port()}"
    world.snap.model("duo", [route("a", upstream_urls["a"]), route("b", upstream_urls["b"])])
    world.snap.model("dead-first", [route("dead", dead), route("b", upstream_urls["b"])])
    world.snap.model(
        "all-dead", [route("dead", dead), route("dead2", f"http://127.0.0.1:{free_port()}")]
    )
    world.snap.model(
        "all-failing", [route("a", upstream_urls["a"]), route("b", upstream_urls["b"])]
    )
    world.publish()
    return world


def post(http, gw, key, model, stream=False, **extra):
    return http.post(
        gw.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "stream": stream, **CHAT, **extra},
    )


def prefer(gw, route_id, *others):
    """Make least-outstanding pick ``route_id`` first by loading the others."""
    for other in others:
        for _ in range(50):
            gw.app.router.acquire(other)


def sse_events(text: str) -> list[str]:
    return [e[len("data: ") :] for e in text.split("\n\n") if e.startswith("data: ")]


def test_retry_on_5xx_before_first_byte(start_gateway, duo, fake_a, fake_b, http):
    gw = start_gateway(eject_after_failures=100)
    gw.wait_version(duo.snap.version)
    prefer(gw, "a", "b")
    fake_a.fail_status = 503
    r = post(http, gw, duo.key, "duo")
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Hello from b"
    assert (fake_a.hits, fake_b.hits) == (1, 1)
    events = wait_for(lambda: usage_events(duo.redis))
    assert events[-1]["replica"] == "b" and events[-1]["status"] == 200


def test_retry_when_connection_refused(gateway, duo, fake_b, http):
    gateway.wait_version(duo.snap.version)
    prefer(gateway, "dead", "b")
    r = post(http, gateway, duo.key, "dead-first")
    assert r.status_code == 200
    assert fake_b.hits == 1
    metrics = http.get(gateway.url + "/metrics").text
    assert 'gateway_upstream_errors_total{kind="connect",route="dead"} 1.0' in metrics


def test_all_routes_down_is_502(gateway, duo, fake_a, fake_b, http):
    gateway.wait_version(duo.snap.version)
    r = post(http, gateway, duo.key, "all-dead")
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unavailable"
    fake_a.fail_status = fake_b.fail_status = 500
    r = post(http, gateway, duo.key, "all-failing")
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    assert (fake_a.hits, fake_b.hits) == (1, 1)


def test_upstream_rejecting_the_route_key_is_not_the_clients_fault(
    gateway, duo, fake_a, fake_b, http
):
    gateway.wait_version(duo.snap.version)
    prefer(gateway, "a", "b")
    fake_a.api_key = "another-key"
    try:
        r = post(http, gateway, duo.key, "duo")
    finally:
        fake_a.api_key = "upstream-secret"
    assert r.status_code == 200 and fake_b.hits == 1


def test_ejection_and_recovery(start_gateway, duo, fake_a, fake_b, http):
    gw = start_gateway(eject_after_failures=2, eject_seconds=1.5)
    gw.wait_version(duo.snap.version)
    fake_a.fail_status = 500
    for _ in range(12):
        assert post(http, gw, duo.key, "duo").status_code == 200
    assert fake_a.hits == 2  # ejected after two consecutive failures
    assert gw.app.router.is_ejected("a")
    metrics = http.get(gw.url + "/metrics").text
    assert 'gateway_route_ejections_total{route="a"} 1.0' in metrics
    fake_a.fail_status = None
    assert wait_for(lambda: not gw.app.router.is_ejected("a"), timeout=5)
    for _ in range(6):
        assert post(http, gw, duo.key, "duo").status_code == 200
    assert fake_a.hits > 2  # back in rotation after the cool-down


def test_first_byte_timeout_is_504_without_retry(start_gateway, duo, fake_a, fake_b, http):
    gw = start_gateway(first_byte_timeout=0.3)
    gw.wait_version(duo.snap.version)
    prefer(gw, "a", "b")
    fake_a.first_byte_delay = 1.5
    r = post(http, gw, duo.key, "duo")
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert fake_b.hits == 0
    events = wait_for(lambda: usage_events(duo.redis))
    assert events[-1]["status"] == 504 and events[-1]["error"] == "upstream_timeout"


def test_stream_breaking_midway_ends_with_an_error_event(gateway, duo, fake_a, fake_b, http):
    gateway.wait_version(duo.snap.version)
    prefer(gateway, "a", "b")
    fake_a.drop_after_chunks = 2
    r = post(http, gateway, duo.key, "duo", stream=True)
    assert r.status_code == 200
    events = sse_events(r.text)
    assert [orjson.loads(e)["choices"][0]["delta"]["content"] for e in events[:2]] == [
        "tok0 ",
        "tok1 ",
    ]
    error = orjson.loads(events[2])["error"]
    assert error["code"] == "upstream_stream_broken"
    assert events[3] == "[DONE]" and len(events) == 4
    assert fake_b.hits == 0  # bytes had reached the client: no retry
    events = wait_for(lambda: usage_events(duo.redis))
    assert events[-1]["error"] == "upstream_stream_broken"
    assert events[-1]["completion_tokens"] == 2  # estimated from the chunks relayed


def test_stream_failing_before_first_byte_is_retried(gateway, duo, fake_a, fake_b, http):
    gateway.wait_version(duo.snap.version)
    prefer(gateway, "a", "b")
    fake_a.drop_after_chunks = 0
    r = post(http, gateway, duo.key, "duo", stream=True)
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert all("error" not in orjson.loads(e) for e in events[:-1])
    assert (fake_a.hits, fake_b.hits) == (1, 1)


def test_idle_timeout_mid_stream(start_gateway, duo, fake_a, http):
    gw = start_gateway(idle_timeout=0.3)
    gw.wait_version(duo.snap.version)
    fake_a.stall_after_chunks = 3
    r = post(http, gw, duo.key, "chat-model", stream=True)
    events = sse_events(r.text)
    assert len(events) == 5
    assert orjson.loads(events[3])["error"]["code"] == "upstream_idle_timeout"
    assert events[4] == "[DONE]"


def test_stream_is_relayed_chunk_by_chunk(gateway, duo, fake_a):
    fake_a.chunk_delay = 0.3
    arrivals = []
    with (
        httpx.Client(timeout=20) as client,
        client.stream(
            "POST",
            gateway.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {duo.key}"},
            json={"model": "chat-model", "stream": True, **CHAT},
        ) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 6  # 5 chunks + [DONE]
    # The source spaces its 5 chunks 0.3 s apart; a buffering proxy would deliver
    # them together at the end.
    assert arrivals[-1] - arrivals[0] > 0.8


def test_stream_usage_chunk_only_when_asked(gateway, world, fake_a, http):
    r = post(http, gateway, world.key, "chat-model", stream=True)
    events = sse_events(r.text)
    assert all('"usage"' not in e or '"usage":null' in e for e in events)
    upstream_body = fake_a.requests[-1]["body"]
    assert upstream_body["stream_options"] == {"include_usage": True}
    r = post(
        http,
        gateway,
        world.key,
        "chat-model",
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [
        orjson.loads(e)["usage"] for e in sse_events(r.text)[:-1] if orjson.loads(e).get("usage")
    ]
    assert usage == [{"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}]
    events = wait_for(lambda: len(usage_events(world.redis)) == 2 and usage_events(world.redis))
    assert [(e["prompt_tokens"], e["completion_tokens"]) for e in events] == [(7, 5), (7, 5)]


def test_upstream_request_rewrites_model_and_key(gateway, world, fake_a, http):
    r = post(http, gateway, world.key, "chat-model", user="someone")
    assert r.status_code == 200
    assert r.json()["model"] == "chat-model"  # rewritten back to the alias
    seen = fake_a.requests[-1]
    assert seen["body"]["model"] == "served-model"
    assert seen["body"]["user"] == "someone"
    assert seen["headers"]["authorization"] == "Bearer upstream-secret"
    assert seen["headers"]["x-request-id"] == r.headers["x-request-id"]


def test_client_request_id_is_ignored_by_default(gateway, world, fake_a, http):
    """A client must not choose the ledger's idempotency key: reusing one would hide usage."""
    headers = {"Authorization": f"Bearer {world.key}", "X-Request-Id": "client-id-12345"}
    for _ in range(2):
        r = http.post(
            gateway.url + "/v1/chat/completions",
            headers=headers,
            json={"model": "chat-model", **CHAT},
        )
        assert r.headers["x-request-id"].startswith("req_")
    events = wait_for(lambda: len(usage_events(world.redis)) == 2 and usage_events(world.redis))
    assert len({e["request_id"] for e in events}) == 2


def test_request_id_is_accepted_or_generated(start_gateway, world, fake_a, http):
    gateway = start_gateway(accept_client_request_id=True)
    gateway.wait_version(world.snap.version)
    headers = {"Authorization": f"Bearer {world.key}", "X-Request-Id": "client-id-12345"}
    r = http.post(
        gateway.url + "/v1/chat/completions", headers=headers, json={"model": "chat-model", **CHAT}
    )
    assert r.headers["x-request-id"] == "client-id-12345"
    assert fake_a.requests[-1]["headers"]["x-request-id"] == "client-id-12345"
    headers["X-Request-Id"] = "bad id with spaces"
    r = http.post(
        gateway.url + "/v1/chat/completions", headers=headers, json={"model": "chat-model", **CHAT}
    )
    assert r.headers["x-request-id"].startswith("req_")
    events = wait_for(lambda: len(usage_events(world.redis)) == 2 and usage_events(world.redis))
    assert [e["request_id"] for e in events] == ["client-id-12345", r.headers["x-request-id"]]


def test_one_usage_event_per_authenticated_request(gateway, world, fake_a, http):
    key = {"Authorization": f"Bearer {world.key}"}
    url = gateway.url + "/v1/chat/completions"
    outcomes = [
        http.post(url, headers=key, json={"model": "chat-model", **CHAT}).status_code,
        http.post(url, headers=key, json={"model": "forbidden-model", **CHAT}).status_code,
        http.post(url, headers=key, json={"model": "missing", **CHAT}).status_code,
        http.post(url, headers=key, content=b"{oops").status_code,
        http.post(url, headers=key, json={"model": "no-route-model", **CHAT}).status_code,
        http.post(url, headers={"Authorization": "Bearer sk-nope"}, json={}).status_code,
    ]
    assert outcomes == [200, 403, 404, 400, 503, 401]
    events = wait_for(lambda: len(usage_events(world.redis)) >= 5 and usage_events(world.redis))
    time.sleep(0.2)
    events = sorted(usage_events(world.redis), key=lambda e: e["ts"])
    assert [e["status"] for e in events] == [200, 403, 404, 400, 503]
    assert len({e["request_id"] for e in events}) == 5
    assert events[1]["error"] == "model_not_allowed"
    assert all(e["key"] == "key-1" and e["org"] == "org-acme" for e in events)


def test_affinity_routes_a_prefix_to_one_replica(start_gateway, duo, fake_a, fake_b, http):
    gw = start_gateway(routing="affinity")
    gw.wait_version(duo.snap.version)
    long_prefix = "You are a helpful assistant for the tax department. " * 20
    for i in range(8):
        body = {
            "messages": [
                {"role": "system", "content": long_prefix},
                {"role": "user", "content": f"q{i}"},
            ]
        }
        assert (
            http.post(
                gw.url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {duo.key}"},
                json={"model": "duo", **body},
            ).status_code
            == 200
        )
    assert sorted([fake_a.hits, fake_b.hits]) == [0, 8]  # one replica got them all
    fake_a.hits = fake_b.hits = 0
    for i in range(40):  # distinct users spread over both replicas
        post(http, gw, duo.key, "duo", user=f"user-{i}")
    assert fake_a.hits > 0 and fake_b.hits > 0 and fake_a.hits + fake_b.hits == 40


def test_client_disconnect_mid_stream_stops_the_upstream(gateway, world, fake_a):
    fake_a.chunk_delay = 0.2
    fake_a.stream_chunks = 50
    try:
        with (
            httpx.Client(timeout=20) as client,
            client.stream(
                "POST",
                gateway.url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {world.key}"},
                json={"model": "chat-model", "stream": True, **CHAT},
            ) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data: "):
                    break  # leave after the first chunk
        events = wait_for(lambda: usage_events(world.redis), timeout=5)
    finally:
        fake_a.stream_chunks = 5
    assert events[-1]["status"] == 499
    assert events[-1]["error"] == "client_disconnected"
    assert events[-1]["completion_tokens"] < 50


def test_prompts_are_logged_only_when_the_org_allows(gateway, world, fake_a, http, caplog):
    secret_prompt = "the launch code is 0000"
    caplog.set_level("DEBUG")
    post(
        http,
        gateway,
        world.key,
        "chat-model",
        messages=[{"role": "user", "content": secret_prompt}],
    )
    assert wait_for(lambda: usage_events(world.redis))
    assert secret_prompt not in caplog.text and "Hello from a" not in caplog.text
    world.snap.orgs["org-acme"]["log_prompts"] = True
    gateway.wait_version(world.publish())
    post(
        http,
        gateway,
        world.key,
        "chat-model",
        messages=[{"role": "user", "content": secret_prompt}],
    )
    assert wait_for(lambda: len(usage_events(world.redis)) == 2)
    prompts = [r.getMessage() for r in caplog.records if r.name == "gateway.prompts"]
    assert any(secret_prompt in m for m in prompts)
    assert any("Hello from a" in m for m in prompts)


def test_connect_timeout_moves_on_to_the_next_route(
    start_gateway, world, upstream_urls, fake_b, http
):
    # A listener whose accept queue is full: new connections hang in SYN-SENT.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(blackhole.getsockname())
        fillers.append(filler)
    try:
        port = blackhole.getsockname()[1]
        world.snap.org("org-acme", slug="acme", models=("chat-model", "hole-first"))
        world.snap.model(
            "hole-first",
            [route("hole", f"http://127.0.0.1:{port}"), route("b", upstream_urls["b"])],
        )
        world.publish()
        gw = start_gateway(connect_timeout=0.3)
        gw.wait_version(world.snap.version)
        prefer(gw, "hole", "b")
        started = time.monotonic()
        r = post(http, gw, world.key, "hole-first")
        assert r.status_code == 200 and fake_b.hits == 1
        elapsed = time.monotonic() - started
        assert 0.3 <= elapsed < 5  # the connect timeout fired (not a refusal, not the OS's)
        metrics = http.get(gw.url + "/metrics").text
        assert 'gateway_upstream_errors_total{kind="connect",route="hole"} 1.0' in metrics
    finally:
        for filler in fillers:
            filler.close()
        blackhole.close()


def test_upstream_client_errors_pass_through(gateway, world, fake_a, http):
    fake_a.fail_status = 400  # e.g. vLLM refusing a prompt longer than the context
    r = post(http, gateway, world.key, "chat-model")
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "a failing"
    events = wait_for(lambda: usage_events(world.redis))
    assert events[-1]["status"] == 400 and events[-1]["error"] == "upstream_400"
    assert (events[-1]["prompt_tokens"], events[-1]["completion_tokens"]) == (0, 0)


def test_a_long_stream_keeps_its_concurrency_slot(start_gateway, world, fake_a, http):
    key = world.snap.key("key-conc", "org-acme", limits={"concurrency": 1})
    world.publish()
    gw = start_gateway(concurrency_slot_ttl=1.0, first_byte_timeout=0.9, idle_timeout=0.9)
    gw.wait_version(world.snap.version)
    fake_a.chunk_delay = 0.25
    fake_a.stream_chunks = 12  # about 3 s, three times the slot's lifetime
    results = {}

    def stream():
        results["stream"] = post(http, gw, key, "chat-model", stream=True)

    try:
        thread = threading.Thread(target=stream)
        thread.start()
        time.sleep(2.0)  # the first slot would have expired twice by now
        second = httpx.post(
            gw.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "chat-model", **CHAT},
            timeout=10,
        )
        thread.join(timeout=20)
    finally:
        fake_a.stream_chunks = 5
    assert results["stream"].status_code == 200
    assert sse_events(results["stream"].text)[-1] == "[DONE]"
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert post(http, gw, key, "chat-model").status_code == 200  # the slot was freed


def test_client_hanging_up_after_done_is_a_complete_answer(gateway, world, fake_a):
    """A client that closes as soon as it reads [DONE] (as SDKs do) got everything:
    the request counts as a 200 with its tokens, not as a 499."""
    fake_a.linger_after_done = 1.0
    headers = {"Authorization": f"Bearer {world.key}"}
    body = {"model": "chat-model", "stream": True, **CHAT}
    with (
        httpx.Client(timeout=20) as client,
        client.stream(
            "POST", gateway.url + "/v1/chat/completions", headers=headers, json=body
        ) as response,
    ):
        for line in response.iter_lines():
            if line == "data: [DONE]":
                break  # closing the stream here hangs up before the upstream ends
    events = wait_for(lambda: usage_events(world.redis))
    assert events[-1]["status"] == 200, events[-1]
    assert events[-1]["completion_tokens"] > 0
