"""External upstreams are reached only at the address the URL guard checked: a DNS
answer that changes between the check and the connection (rebinding) never sends the
gateway to the second answer. Replica routes (internal by design) are not guarded."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from tests.gateway.fakes import FakeUpstream, ServerThread, SnapshotBuilder, free_port, route

NAME = "rebind.test"


@pytest.fixture
def two_hosts():
    """The same port on 127.0.0.2 (stands for the public answer; allowed below) and on
    127.0.0.1 (the internal service a rebinding attack wants to reach)."""
    port = free_port()
    good, secret = FakeUpstream(name="good"), FakeUpstream(name="secret")
    good_server = ServerThread(good, port=port)
    good_server.config.host = "127.0.0.2"
    good_server.start()
    secret_server = ServerThread(secret, port=port).start()
    yield port, good, secret
    good_server.stop()
    secret_server.stop()


@pytest.fixture
def rebinding_dns(monkeypatch):
    """getaddrinfo for NAME answers 127.0.0.2 first and 127.0.0.1 ever after."""
    real = socket.getaddrinfo
    calls: list[str] = []
    lock = threading.Lock()

    def fake(host, port, *args, **kwargs):
        if host != NAME:
            return real(host, port, *args, **kwargs)
        with lock:
            calls.append(host)
            answer = "127.0.0.2" if len(calls) == 1 else "127.0.0.1"
        return real(answer, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return calls


def publish(redis_client, port: int, external: bool = True) -> tuple[SnapshotBuilder, str]:
    snap = SnapshotBuilder()
    snap.org("org-x", slug="x", models=("ext",), allow_external=True)
    key = snap.key("key-x", "org-x")
    snap.model(
        "ext", [route("ext", f"http://{NAME}:{port}", external=external)], openness="open-access"
    )
    snap.publish(redis_client)
    return snap, key


def ask(url: str, key: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "ext", "messages": [{"role": "user", "content": "hi"}]},
        timeout=20,
    )


def test_rebinding_never_reaches_the_second_answer(
    two_hosts, rebinding_dns, redis_client, start_gateway
):
    port, good, secret = two_hosts
    snap, key = publish(redis_client, port)
    gw = start_gateway(allowed_internal_hosts=("127.0.0.2",), max_attempts=1)
    gw.wait_version(snap.version)

    first = ask(gw.url, key)
    assert first.status_code == 200, first.text
    assert (good.hits, secret.hits) == (1, 0)
    assert len(rebinding_dns) == 1  # resolved once: the connection used the checked answer
    assert good.requests[-1]["headers"]["host"] == f"{NAME}:{port}"

    # A new connection resolves again, gets 127.0.0.1 and is refused before connecting.
    gw.app.services.client._idle.clear()
    second = ask(gw.url, key)
    assert second.status_code == 502
    assert second.json()["error"]["code"] == "upstream_unavailable"
    assert secret.hits == 0


def test_replica_routes_are_not_guarded(two_hosts, redis_client, start_gateway, monkeypatch):
    port, _good, secret = two_hosts
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, *a, **k: real("127.0.0.1" if host == NAME else host, *a, **k),
    )
    snap, key = publish(redis_client, port, external=False)
    gw = start_gateway()
    gw.wait_version(snap.version)
    assert ask(gw.url, key).status_code == 200
    assert secret.hits == 1
