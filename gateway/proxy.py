"""Forward a planned request to an upstream route and relay the answer.

* The upstream body is the client's JSON with ``model`` rewritten to the route's
  served name (plus ``max_tokens`` when the gateway must bound a reservation, and
  ``stream_options.include_usage`` for streams so the final chunk carries usage);
  ``Authorization: Bearer <route.api_key>``.
* Retries go to the next candidate route when connecting fails or the upstream answers
  5xx (or drops the stream) before the first byte has gone to the client. Afterwards
  nothing is retried: a broken stream ends with an SSE ``error`` event and ``[DONE]``.
* Streams are relayed event by event as they arrive, never buffered; the usage chunk the
  gateway asked for is removed unless the client asked for it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson

from gateway import contract
from gateway.context import RequestContext
from gateway.errors import GatewayError, describe, error_payload
from gateway.metrics import Metrics
from gateway.policy import Plan
from gateway.routing import Router
from gateway.settings import Settings
from gateway.upstream import UpstreamClient, UpstreamError, UpstreamResponse

log = logging.getLogger("gateway.proxy")
#: Prompts and completions, only for organizations with ``log_prompts``.
prompt_log = logging.getLogger("gateway.prompts")

PATHS = {
    "chat.completions": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE_EVENT = b"data: [DONE]\n\n"


class _Retry(Exception):
    """This attempt failed before anything reached the client; try the next route."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def upstream_body(plan: Plan, route: contract.Route, raw: bytes) -> bytes:
    """The JSON to send upstream; the client's bytes untouched when nothing changes."""
    changes: dict[str, Any] = {}
    if route["model"] != plan.alias:
        changes["model"] = route["model"]
    if plan.inject_max_tokens is not None:
        changes["max_tokens"] = plan.inject_max_tokens
    if plan.stream and not plan.client_wants_usage:
        options = dict(plan.body.get("stream_options") or {})
        options["include_usage"] = True
        changes["stream_options"] = options
    if not changes:
        return raw
    return orjson.dumps({**plan.body, **changes})


def _usage_counts(usage: Any) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0) or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion


def _passed_through(response: UpstreamResponse) -> list[tuple[bytes, bytes]]:
    """An upstream's own back-off advice (e.g. a provider's 429) reaches the client."""
    if response.status < 400:
        return []
    value = response.header(b"retry-after")
    return [(b"retry-after", value)] if value is not None else []


class Proxy:
    def __init__(
        self,
        client: UpstreamClient,
        router: Router,
        metrics: Metrics,
        settings: Settings,
    ) -> None:
        self.client = client
        self.router = router
        self.metrics = metrics
        self.settings = settings
        self._tasks: set[asyncio.Task[Any]] = set()

    async def forward(
        self,
        ctx: RequestContext,
        plan: Plan,
        raw: bytes,
        affinity_key: str | None,
        send: Any,
        receive: Any,
        blocks: tuple[int, ...] = (),
    ) -> None:
        own, shared = plan.routes[: plan.own_routes], plan.routes[plan.own_routes :]
        candidates = self.router.order_tiers(plan.alias, [own, shared], affinity_key, blocks)
        if not candidates:
            raise GatewayError(
                503,
                f"No ready replica serves the model '{plan.alias}' right now.",
                code="no_route",
            )
        candidates = candidates[: self.settings.max_attempts]
        path = PATHS[plan.endpoint]
        last: _Retry | None = None
        for route in candidates:
            route_id = route["id"]
            self.router.acquire(route_id)
            self.router.record_prompt(route_id, blocks)
            try:
                await self._attempt(ctx, plan, route, path, raw, send, receive)
                return
            except _Retry as retry:
                last = retry
                self._failure(route_id, retry.kind)
                log.warning(
                    "request %s: route %s failed (%s: %s)%s",
                    ctx.request_id,
                    route_id,
                    retry.kind,
                    retry,
                    "; trying another" if route is not candidates[-1] else "",
                )
            finally:
                self.router.release(route_id)
        assert last is not None
        if last.kind == "first_byte":
            raise GatewayError(
                504,
                f"The upstream for '{plan.alias}' did not answer in time.",
                code="upstream_timeout",
            )
        # The details (addresses, upstream messages) go to the log, not to the client.
        if last.kind == "status":
            raise GatewayError(
                502,
                f"The upstream serving '{plan.alias}' returned an error "
                f"(request id {ctx.request_id}).",
                code="upstream_error",
            )
        raise GatewayError(
            502,
            f"No upstream serving '{plan.alias}' could be reached (request id {ctx.request_id}).",
            code="upstream_unavailable",
        )

    def _background(self, work: Any, request_id: str) -> None:
        """Run ``work`` beside the stream; a failure is logged, never raised into it."""

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning(
                    "request %s: background work failed: %s", request_id, describe(task.exception())
                )

        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(done)

    def _failure(self, route_id: str, kind: str) -> None:
        self.metrics.upstream_errors.labels(route_id, kind).inc()
        if self.router.record_failure(route_id):
            self.metrics.route_ejections.labels(route_id).inc()
            log.warning(
                "route %s ejected for %g s after repeated failures",
                route_id,
                self.settings.eject_seconds,
            )

    async def _attempt(
        self,
        ctx: RequestContext,
        plan: Plan,
        route: contract.Route,
        path: str,
        raw: bytes,
        send: Any,
        receive: Any,
    ) -> None:
        body = upstream_body(plan, route, raw)
        headers = [
            (b"content-type", b"application/json"),
            (b"x-request-id", ctx.request_id.encode()),
        ]
        if route.get("api_key"):
            headers.append((b"authorization", b"Bearer " + route["api_key"].encode()))
        if plan.stream:
            headers.append((b"accept", b"text/event-stream"))
        ctx.replica = route["id"]
        ctx.owner = route.get("owner")
        ctx.upstream_sent_at = time.perf_counter()
        try:
            response = await self.client.post(
                route["url"], path, body, headers, guarded=bool(route.get("external"))
            )
        except UpstreamError as exc:
            if exc.kind == "first_byte":
                # Not retried: the upstream may be working on it; a second replica
                # would double the load of a request that is already slow.
                self._failure(route["id"], exc.kind)
                raise GatewayError(
                    504,
                    f"The upstream for '{plan.alias}' sent no answer within "
                    f"{self.settings.first_byte_timeout:g} s.",
                    code="upstream_timeout",
                ) from None
            raise _Retry(exc.kind, str(exc)) from None
        if response.status >= 500 or response.status in (401, 403):
            # 401/403 from an upstream means the route's own key is wrong: the
            # client's request is fine, so it is an upstream failure, not theirs.
            with contextlib.suppress(UpstreamError):
                await response.read()
            raise _Retry("status", f"HTTP {response.status} from route {route['id']}")
        if plan.stream and response.status == 200:
            await self._relay_stream(ctx, plan, route, response, send, receive)
        else:
            await self._relay_whole(ctx, plan, route, response, send)

    async def _relay_whole(
        self,
        ctx: RequestContext,
        plan: Plan,
        route: contract.Route,
        response: UpstreamResponse,
        send: Any,
    ) -> None:
        ctx.first_byte_at = time.perf_counter()
        try:
            data = await response.read()
        except UpstreamError as exc:
            response.abort()
            raise _Retry(exc.kind, f"reading the answer failed: {exc}") from None
        ctx.upstream_done_at = time.perf_counter()
        self.router.record_success(route["id"])
        status = response.status
        content_type = response.header(b"content-type") or b"application/json"
        if status == 200:
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                counts = _usage_counts(parsed.get("usage"))
                if counts is not None:
                    ctx.prompt_tokens, ctx.completion_tokens = counts
                    ctx.usage_reported = True
                if (
                    self.settings.rewrite_response_model
                    and parsed.get("model") != plan.alias
                    and "model" in parsed
                ):
                    parsed["model"] = plan.alias
                    data = orjson.dumps(parsed)
        ctx.status = status
        if status >= 400:
            ctx.error = f"upstream_{status}"
        if ctx.principal is not None and ctx.principal.org.get("log_prompts"):
            prompt_log.info(
                "request %s answer: %s", ctx.request_id, data.decode("utf-8", "replace")
            )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(data)).encode()),
                    *ctx.response_headers,
                    *_passed_through(response),
                ],
            }
        )
        ctx.response_started = True
        await send({"type": "http.response.body", "body": data, "more_body": False})

    async def _relay_stream(
        self,
        ctx: RequestContext,
        plan: Plan,
        route: contract.Route,
        response: UpstreamResponse,
        send: Any,
        receive: Any,
    ) -> None:
        # Nothing has reached the client until the first chunk is in hand, so a failure
        # up to here is still retried on another route.
        try:
            first = await response.next_chunk(self.settings.first_byte_timeout)
        except UpstreamError as exc:
            response.abort()
            if exc.kind == "idle":
                self._failure(route["id"], "first_byte")
                raise GatewayError(
                    504,
                    f"The upstream for '{plan.alias}' sent no tokens within "
                    f"{self.settings.first_byte_timeout:g} s.",
                    code="upstream_timeout",
                ) from None
            raise _Retry(exc.kind, f"stream failed before its first byte: {exc}") from None
        if first is None:
            raise _Retry("closed", "stream ended before its first byte")
        ctx.first_byte_at = time.perf_counter()
        ctx.status = 200
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_SSE_HEADERS, *ctx.response_headers],
            }
        )
        ctx.response_started = True

        disconnected = asyncio.Event()

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    response.abort()
                    return

        watcher = asyncio.create_task(watch_disconnect())
        renew_every = self.settings.concurrency_slot_ttl / 3
        renewed_at = time.monotonic()
        log_prompts = bool(ctx.principal and ctx.principal.org.get("log_prompts"))
        relay = _SSERelay(strip_usage=not plan.client_wants_usage, collect=log_prompts)
        try:
            chunk: bytes | None = first
            while chunk is not None:
                out = relay.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if disconnected.is_set() and not relay.finished:
                    break
                if ctx.renew_slot is not None and time.monotonic() - renewed_at > renew_every:
                    renewed_at = time.monotonic()
                    self._background(ctx.renew_slot(), ctx.request_id)
                try:
                    chunk = await response.next_chunk()
                except UpstreamError as exc:
                    if disconnected.is_set():
                        break
                    response.abort()
                    self._failure(route["id"], f"stream_{exc.kind}")
                    ctx.error = (
                        "upstream_idle_timeout"
                        if exc.kind == "idle"
                        else ("upstream_stream_broken")
                    )
                    message = (
                        f"The upstream stopped sending for {self.settings.idle_timeout:g} s."
                        if exc.kind == "idle"
                        else "The upstream connection broke during the stream."
                    )
                    error = error_payload(message, "upstream_error", None, ctx.error)
                    tail = relay.flush() + b"data: " + orjson.dumps(error) + b"\n\n"
                    await send(
                        {
                            "type": "http.response.body",
                            "body": tail + _DONE_EVENT,
                            "more_body": False,
                        }
                    )
                    return
            else:
                self.router.record_success(route["id"])
            ctx.upstream_done_at = time.perf_counter()
            if disconnected.is_set():
                if relay.finished:
                    # It hung up after [DONE]: it got the whole answer, a 200.
                    self.router.record_success(route["id"])
                else:
                    ctx.status = 499
                    ctx.error = "client_disconnected"
                return
            await send({"type": "http.response.body", "body": relay.flush(), "more_body": False})
        finally:
            watcher.cancel()
            # Whatever ended the relay (a client that stopped reading included), the
            # upstream stream is not left running; a no-op once it was released.
            response.abort()
            if relay.usage is not None:
                ctx.prompt_tokens, ctx.completion_tokens = relay.usage
                ctx.usage_reported = True
            else:
                ctx.prompt_tokens = (
                    plan.prompt_estimate if ctx.prompt_counted is None else ctx.prompt_counted
                )
                ctx.completion_tokens = relay.content_events
            if log_prompts:
                prompt_log.info("request %s answer (stream): %s", ctx.request_id, relay.text_seen())


class _SSERelay:
    """Splits the upstream byte stream into SSE events, notes the usage chunk and drops
    it when only the gateway asked for it. Complete events go out at once; only a
    partial trailing event waits for its end."""

    __slots__ = (
        "_collected",
        "_pending",
        "collect",
        "content_events",
        "finished",
        "strip_usage",
        "usage",
    )

    def __init__(self, strip_usage: bool, collect: bool = False) -> None:
        self.strip_usage = strip_usage
        self.collect = collect
        self._pending = b""
        self.usage: tuple[int, int] | None = None
        self.content_events = 0
        self._collected: list[bytes] = []
        self.finished = False  # the upstream's [DONE] went out: the answer is complete

    def feed(self, chunk: bytes) -> bytes:
        out = self._feed(chunk)
        if self.collect and out:
            self._collected.append(out)
        if out.endswith(_DONE_EVENT):
            self.finished = True
        return out

    def _feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        normalized = data.replace(b"\r\n", b"\n") if b"\r" in data else data
        end = normalized.rfind(b"\n\n")
        if end < 0:
            self._pending = normalized
            return b""
        complete, self._pending = normalized[: end + 2], normalized[end + 2 :]
        if b'"usage"' not in complete:
            self.content_events += complete.count(b"data: ")
            return complete
        out = []
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            keep = True
            if b'"usage"' in event and event.startswith(b"data: {"):
                try:
                    parsed = orjson.loads(event[6:])
                except orjson.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, dict):
                    counts = _usage_counts(parsed.get("usage"))
                    if counts is not None:
                        self.usage = counts
                        if self.strip_usage and not parsed.get("choices"):
                            keep = False
                    elif parsed.get("choices"):
                        self.content_events += 1
            elif event.startswith(b"data: {"):
                self.content_events += 1
            if keep:
                out.append(event + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        pending, self._pending = self._pending, b""
        return pending

    def text_seen(self) -> str:
        """The generated text relayed so far (only kept when ``collect`` is on)."""
        parts: list[str] = []
        for event in b"".join(self._collected).split(b"\n\n"):
            if not event.startswith(b"data: {"):
                continue
            try:
                parsed = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                continue
            for choice in parsed.get("choices") or ():
                delta = choice.get("delta") or {}
                text = delta.get("content") if isinstance(delta, dict) else None
                text = text if isinstance(text, str) else choice.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return "".join(parts)
