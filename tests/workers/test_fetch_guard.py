"""Artifact downloads connect only to addresses the URL guard checked: a DNS answer
that changes between the check and the connection is never used, and every redirect
hop is checked again."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from gateway.netguard import NetGuard
from tests.support.vllm import free_port
from workers import artifacts

NAME = "hub.rebind.test"


class Server:
    """An HTTP server on one loopback address that counts its requests."""

    def __init__(self, host: str, port: int, redirect_to: str | None = None) -> None:
        self.hits: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits.append((self.path, self.headers.get("host", "")))
                if redirect_to and self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("location", redirect_to)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                body = f"served by {host}".encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    """127.0.0.2 stands for the public answer (allowed below); 127.0.0.1 is the internal
    service a rebinding attack wants to reach, on the same port."""
    port = free_port()
    secret = Server("127.0.0.1", port)
    good = Server("127.0.0.2", port, redirect_to=f"http://127.0.0.1:{port}/secret")
    yield port, good, secret
    good.stop()
    secret.stop()


@pytest.fixture
def rebinding_dns(monkeypatch):
    real = socket.getaddrinfo
    calls: list[str] = []

    def fake(host, port, *args, **kwargs):
        if host != NAME:
            return real(host, port, *args, **kwargs)
        calls.append(host)
        answer = "127.0.0.2" if len(calls) == 1 else "127.0.0.1"
        return real(answer, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return calls


def client() -> httpx.Client:
    guard = NetGuard(["127.0.0.2"])
    return httpx.Client(transport=artifacts.guarded_transport(guard), follow_redirects=True)


def test_the_download_connects_to_the_checked_answer_only(servers, rebinding_dns):
    port, good, secret = servers
    with client() as http:
        response = http.get(f"http://{NAME}:{port}/file")
        assert response.text == "served by 127.0.0.2"
        assert good.hits == [("/file", f"{NAME}:{port}")]  # the name in Host, not the IP
        assert rebinding_dns == [NAME]  # resolved once, for the check
        # The next request resolves again: the second answer is refused, not used.
        with pytest.raises(artifacts.ArtifactError, match="internal address"):
            http.get(f"http://{NAME}:{port}/again", headers={"connection": "close"})
    assert secret.hits == []


def test_redirects_are_checked_again(servers):
    port, good, secret = servers
    with client() as http, pytest.raises(artifacts.ArtifactError, match="internal address"):
        http.get(f"http://127.0.0.2:{port}/redirect")
    assert [path for path, _ in good.hits] == ["/redirect"]
    assert secret.hits == []


def test_the_hub_download_goes_through_the_guard(servers, rebinding_dns, tmp_path):
    """The default downloader receives the guard (the fetch task passes the platform's)."""
    seen = {}

    def fake_hub(repo, revision, local_dir, allow_patterns, endpoint, *, guard=None):
        seen["guard"] = guard
        (local_dir / "config.json").write_bytes(b"{}")

    guard = NetGuard(["127.0.0.2"])
    original = artifacts.hub_download
    artifacts.hub_download = fake_hub
    try:
        artifacts.fetch_huggingface(
            "o/m", "a" * 40, tmp_path / "m", guard=guard, downloader=fake_hub
        )
    finally:
        artifacts.hub_download = original
    assert seen["guard"] is guard
