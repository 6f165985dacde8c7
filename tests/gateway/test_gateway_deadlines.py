"""Input deadlines and malformed input: a body not received in time is a 408, a
stream client that stops reading is dropped and its concurrency slot released, and
every malformed request part is a 400 in OpenAI format (affinity routing included).
Real sockets against an in-process gateway; synchronised on Redis state, not sleeps."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import httpx
import orjson
import pytest

from tests.gateway.fakes import ServerThread, SnapshotBuilder, route, usage_events, wait_for


def raw_request(key: str, body: bytes, declared: int | None = None) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {key}\r\ncontent-length: {declared or len(body)}\r\n\r\n".encode()
        + body
    )


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    headers = dict(
        line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line
    )
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def test_a_body_not_received_in_time_is_a_408(gateway_factory, world):
    gw = gateway_factory(body_timeout=0.3)
    with socket.create_connection(("127.0.0.1", gw.server.port), timeout=30) as sock:
        sock.sendall(raw_request(world.key, b'{"model": "chat-model", "mess', declared=500))
        # ...and the rest never comes.
        status, headers, body = read_response(sock)
        assert status == 408
        error = orjson.loads(body)["error"]
        assert error["code"] == "request_timeout" and error["type"] and error["message"]
        assert headers.get("connection") == "close"
        assert sock.recv(1) == b""  # the server let go of the connection
    events = wait_for(lambda: usage_events(world.redis), timeout=10)
    assert [e["status"] for e in events] == [408]
    assert gw.app.metrics.in_flight._value.get() == 0


def test_a_slow_but_steady_body_still_has_one_deadline(gateway_factory, world):
    gw = gateway_factory(body_timeout=0.5)
    body = json.dumps({"model": "chat-model", "messages": [{"role": "user", "content": "x"}]})
    stop = threading.Event()
    with socket.create_connection(("127.0.0.1", gw.server.port), timeout=30) as sock:
        sock.sendall(raw_request(world.key, b"", declared=len(body) * 1000))

        def trickle() -> None:  # one byte at a time, never the whole body
            while not stop.wait(0.05):
                try:
                    sock.sendall(b" ")
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            status, _, body_out = read_response(sock)
        finally:
            stop.set()
            sender.join()
    assert status == 408 and orjson.loads(body_out)["error"]["code"] == "request_timeout"


class EndlessStream:
    """An upstream that streams big SSE events until its client goes away."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.ended = threading.Event()
        self.event = (
            b"data: "
            + orjson.dumps({"choices": [{"index": 0, "delta": {"content": "x" * 60000}}]})
            + b"\n\n"
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        self.started.set()
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            while not gone.is_set():
                await send({"type": "http.response.body", "body": self.event, "more_body": True})
                await asyncio.sleep(0)
        finally:
            watcher.cancel()
            self.ended.set()


def slots(redis_client) -> int:
    return sum(redis_client.zcard(k) for k in redis_client.scan_iter(match="*:conc"))


def test_a_stream_client_that_stops_reading_is_dropped_and_its_slot_released(
    redis_client, start_gateway
):
    upstream = EndlessStream()
    server = ServerThread(upstream).start()
    try:
        snap = SnapshotBuilder()
        snap.org("org-s", slug="s", models=("m",), limits={"concurrency": 1})
        key = snap.key("key-s", "org-s")
        snap.model("m", [route("r", server.url)])
        snap.publish(redis_client)
        gw = start_gateway(write_timeout=0.5)
        gw.wait_version(snap.version)

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", gw.server.port))
        body = orjson.dumps(
            {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        )
        sock.sendall(raw_request(key, body))
        # It never reads. The slot is taken while the stream runs...
        assert upstream.started.wait(30)
        assert wait_for(lambda: slots(redis_client) == 1, timeout=30)
        # ...and given back once the gateway gives up writing to it.
        assert wait_for(lambda: slots(redis_client) == 0, timeout=60)
        assert upstream.ended.wait(30)  # the upstream stream was closed too
        events = wait_for(lambda: usage_events(redis_client), timeout=10)
        assert events[-1]["status"] == 499
        assert events[-1]["error"] == "client_write_timeout"
        # The slot is free for the next request.
        upstream_ok = httpx.post(
            gw.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "m", "messages": "not a list"},
            timeout=10,
        )
        assert upstream_ok.status_code == 400
        sock.close()
    finally:
        server.stop()


MALFORMED = [
    ({"model": "chat-model", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    (
        {"model": "chat-model", "messages": [{"role": "user", "content": [1, 2]}]},
        "messages[0].content",
    ),
    (
        {"model": "chat-model", "messages": [{"role": "user", "content": {"a": 1}}]},
        "messages[0].content",
    ),
    ({"model": "chat-model", "messages": [{"content": "no role"}]}, "messages[0]"),
    ({"model": "chat-model", "messages": "hi"}, "messages"),
    ({"model": "chat-model", "messages": [5]}, "messages[0]"),
    ({"model": 5, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    (
        {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"},
        "max_tokens",
    ),
    (
        {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
        "stream",
    ),
]


@pytest.mark.parametrize("routing", ["least-outstanding", "affinity"])
@pytest.mark.parametrize(("body", "param"), MALFORMED)
def test_malformed_parts_are_400s_in_openai_format(gateway_factory, world, routing, body, param):
    gw = gateway_factory(routing=routing)
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {world.key}"},
        json=body,
        timeout=10,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}],
        [{"type": "text", "text": 5}, {"type": "text", "text": "ok"}],
        [{"type": "image_url", "image_url": {"url": "x"}}],
        [],
        None,
    ],
)
def test_affinity_routing_hashes_text_parts_and_never_crashes(
    gateway_factory, world, fake_a, content
):
    gw = gateway_factory(routing="affinity")
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {world.key}"},
        json={"model": "chat-model", "messages": [{"role": "user", "content": content}]},
        timeout=10,
    )
    assert response.status_code == 200, response.text


@pytest.fixture
def gateway_factory(start_gateway, world):
    def make(**overrides):
        handle = start_gateway(**overrides)
        handle.wait_version(world.snap.version)
        return handle

    return make
