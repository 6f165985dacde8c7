"""The gateway's ASGI application.

``create_app(settings)`` builds a ``Gateway``; its lifespan owns the shared upstream
client, the Redis pools, the snapshot watcher and the usage flusher. Pure ASGI: no
framework, no middleware classes, nothing module-level but constants.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import re
import time
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway import contract
from gateway.auth import Principal, authenticate, presented_key, require_scope
from gateway.coldstart import ClientGone as ColdStartClientGone
from gateway.coldstart import ColdStarts
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.limits import (
    BUDGET_LIMITS,
    Limiter,
    LimitsUnavailable,
    NearBudgets,
    NeedsExactCount,
    Reservation,
    Subject,
    has_admission_limits,
    has_budget,
)
from gateway.loadshare import LoadShare
from gateway.locallimits import LocalLimiter
from gateway.metrics import Metrics
from gateway.netguard import NetGuard
from gateway.policy import Plan, affinity_key_for, level_limits, plan_request, prompt_blocks
from gateway.proxy import Proxy
from gateway.resp import ScriptClient
from gateway.routing import Router
from gateway.settings import Settings
from gateway.snapshot import CompiledSnapshot, SnapshotHolder, SnapshotWatcher
from gateway.tokencount import count_prompt
from gateway.upstream import UpstreamClient
from gateway.usage import UsageRecorder

log = logging.getLogger("gateway.app")
access_log = logging.getLogger("gateway.access")
prompt_log = logging.getLogger("gateway.prompts")

INFERENCE_PATHS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")
_JSON = [(b"content-type", b"application/json")]


class _ClientGone(Exception):
    pass


class ClientWriteTimeout(Exception):
    """A write to the client stayed blocked past ``write_timeout``: it stopped reading."""


def _send_with_deadline(send: Any, timeout: float) -> Any:
    """``send`` that gives up after ``timeout`` seconds of back-pressure (a client that
    stopped reading would otherwise hold the request, its upstream stream and its
    concurrency slot for as long as it likes).

    A send only waits when the connection's write buffer is full; otherwise it writes
    and returns without suspending. So the send is stepped once by hand: when it
    finishes at once (nearly always) no timer is armed at all, which spared a timer per
    send on every response and stream chunk. When it suspends, the awaitable it waits on
    is awaited here, under the deadline, and the send resumed after it, until it ends;
    at the deadline the send is closed and the request fails as ``ClientWriteTimeout``."""

    async def deadline_send(message: dict[str, Any]) -> None:
        step = send(message)
        try:
            waiting = step.send(None)
        except StopIteration:
            return
        except BaseException:
            step.close()
            raise
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        if waiting is None:  # a bare yield: let the loop run once
                            await asyncio.sleep(0)
                        else:
                            # What a task does with a future its coroutine yields: take
                            # it over (clear its "yielded" flag), wait for it, resume.
                            waiting._asyncio_future_blocking = False
                            await waiting
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # noqa: S110 - the send sees it when resumed
                        pass
                    try:
                        waiting = step.send(None)
                    except StopIteration:
                        return
        except TimeoutError:
            raise ClientWriteTimeout() from None
        finally:
            step.close()

    return deadline_send


class Services:
    """What the lifespan opens and closes."""

    def __init__(self, gateway: Gateway) -> None:
        settings = gateway.settings
        # A blocking pool: a burst waits (up to redis_timeout) for a free connection
        # instead of failing the request.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_timeout,
            # One immediate retry (a pooled connection Redis closed); no backoff: when
            # Redis is down the request must learn it within redis_timeout.
            retry=Retry(NoBackoff(), 1),
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self.pubsub_redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=10,
        )
        self.client = UpstreamClient(
            connect_timeout=settings.connect_timeout,
            first_byte_timeout=settings.first_byte_timeout,
            idle_timeout=settings.idle_timeout,
            max_idle_per_origin=settings.upstream_pool_size,
            guard=NetGuard(settings.allowed_internal_hosts),
        )
        self.scripts = ScriptClient(settings.redis_url, settings.redis_timeout)
        self.limiter = Limiter(
            self.scripts, settings.concurrency_slot_ttl, settings.usage_stream_maxlen
        )
        self.local_limits = LocalLimiter(settings.fail_open_share)
        self.usage = UsageRecorder(
            self.redis,
            self.limiter,
            gateway.metrics,
            maxlen=settings.usage_stream_maxlen,
            buffer_max=settings.usage_buffer_max,
            journal_dir=settings.journal_dir or None,
        )
        self.watcher = SnapshotWatcher(
            self.redis,
            gateway.snapshots,
            settings.snapshot_poll_interval,
            pubsub_redis=self.pubsub_redis,
        )
        self.proxy = Proxy(self.client, gateway.router, gateway.metrics, settings)
        self.cold_starts = ColdStarts(
            self.redis,
            queue_limit=settings.cold_start_queue,
            timeout=settings.cold_start_timeout,
        )
        self.loadshare = LoadShare(
            self.scripts, gateway.router, gateway.instance, settings.load_share_interval
        )

    async def start(self) -> None:
        self.usage.start()
        await self.watcher.start()
        self.loadshare.start()
        with contextlib.suppress(Exception):  # connect now rather than on the first request
            await self.scripts.execute("PING")

    async def stop(self) -> None:
        await self.loadshare.stop()
        await self.watcher.stop()
        await self.usage.stop()
        await self.client.aclose()
        await self.scripts.aclose()
        for client in (self.redis, self.pubsub_redis):
            with contextlib.suppress(Exception):
                await client.aclose()


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.snapshots = SnapshotHolder()
        self.snapshots.listeners.append(self._on_snapshot)
        self.router = Router(
            strategy=settings.routing,
            affinity_models=settings.affinity_models,
            eject_after_failures=settings.eject_after_failures,
            eject_seconds=settings.eject_seconds,
            load_bound=settings.load_bound,
            prefix_capacity=settings.prefix_index_blocks,
        )
        self.services: Services | None = None
        self.instance = uuid.uuid4().hex[:12]
        self._sequence = itertools.count()
        self._near_budgets = NearBudgets()

    def _on_snapshot(self, snapshot: CompiledSnapshot) -> None:
        self.metrics.snapshot_version.set(snapshot.version)
        self._near_budgets.forget()  # a budget may have changed
        if self.services is not None:
            self.services.cold_starts.snapshot_changed()

    async def _hold_for_replica(
        self, ctx: RequestContext, plan: Plan, raw: bytes, principal: Principal, receive: Any
    ) -> Plan:
        """Hold a request for an autoscaled model with no ready replica (see
        ``gateway.coldstart``); the plan, made again on the snapshot that has one."""
        assert self.services is not None

        def replanned() -> Plan | None:
            snapshot = self.snapshots.current
            if plan.alias not in snapshot.models:
                return None
            again = plan_request(plan.endpoint, raw, principal, snapshot, self.settings)
            return again if again.routes else None

        started = time.monotonic()
        try:
            ready = await self.services.cold_starts.hold(plan.alias, replanned, receive)
        except ColdStartClientGone:
            raise _ClientGone() from None
        log.info(
            "request %s: held %.1f s for a replica of %s",
            ctx.request_id,
            time.monotonic() - started,
            plan.alias,
        )
        return ready

    # ------------------------------------------------------------------ ASGI entry
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.services = Services(self)
                    await self.services.start()
                except Exception as exc:
                    log.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                _settle_heap()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.services is not None:
                    await self.services.stop()
                self.metrics.process_exit()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        endpoint = INFERENCE_PATHS.get(path)
        if endpoint is not None:
            if scope["method"] != "POST":
                await self._simple_error(scope, send, _method_not_allowed("POST"))
                return
            await self._inference(scope, receive, send, endpoint)
        elif path == "/v1/models" or path.startswith("/v1/models/"):
            if scope["method"] != "GET":
                await self._simple_error(scope, send, _method_not_allowed("GET"))
                return
            await self._models(scope, send, path[len("/v1/models/") :] or None)
        elif path == "/healthz":
            await _send_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            ready = self.snapshots.loaded and self.services is not None
            await _send_json(
                send,
                200 if ready else 503,
                {
                    "status": "ready" if ready else "not ready",
                    "snapshot_version": self.snapshots.current.version,
                },
            )
        elif path == "/metrics":
            body, content_type = self.metrics.render()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", content_type.encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        else:
            await self._simple_error(
                scope,
                send,
                GatewayError(404, f"Unknown path {path!r}.", code="unknown_url"),
            )

    def _request_id(self, scope: dict[str, Any]) -> str:
        if self.settings.accept_client_request_id:
            for name, value in scope["headers"]:
                if name == b"x-request-id":
                    candidate = value.decode("latin-1")
                    if _REQUEST_ID_RE.match(candidate):
                        return candidate
                    break
        return "req_" + uuid.uuid4().hex

    async def _simple_error(self, scope: dict[str, Any], send: Any, err: GatewayError) -> None:
        request_id = self._request_id(scope)
        await _send_error(send, err, [(b"x-request-id", request_id.encode()), *err.headers])

    # ------------------------------------------------------------------ /v1/models
    async def _models(self, scope: dict[str, Any], send: Any, model_id: str | None) -> None:
        request_id = self._request_id(scope)
        headers = [(b"x-request-id", request_id.encode())]
        snapshot = self.snapshots.current
        try:
            principal = authenticate(
                presented_key(scope["headers"]), snapshot, self.settings.api_key_pepper
            )
            require_scope(principal)
        except GatewayError as err:
            await _send_error(send, err, headers + err.headers)
            return
        allowed = sorted(a for a in snapshot.allowed_models(principal.key) if a in snapshot.models)
        owner = principal.org.get("slug") or "organization"
        created = int(snapshot.data.get("generated_at") or 0)

        def card(alias: str) -> dict[str, Any]:
            return {"id": alias, "object": "model", "created": created, "owned_by": owner}

        if model_id is None:
            await _send_json(
                send, 200, {"object": "list", "data": [card(a) for a in allowed]}, headers
            )
        elif model_id in allowed:
            await _send_json(send, 200, card(model_id), headers)
        else:
            await _send_error(
                send,
                GatewayError(
                    404,
                    f"The model '{model_id}' does not exist.",
                    code="model_not_found",
                    param="model",
                ),
                headers,
            )

    # ------------------------------------------------------------------ inference
    async def _inference(
        self, scope: dict[str, Any], receive: Any, send: Any, endpoint: str
    ) -> None:
        services = self.services
        assert services is not None, "the lifespan has not run"
        settings = self.settings
        metrics = self.metrics
        send = _send_with_deadline(send, settings.write_timeout)
        ctx = RequestContext(
            request_id=self._request_id(scope),
            endpoint=endpoint,
            arrived_at=time.time(),
            started=time.perf_counter(),
        )
        ctx.response_headers.append((b"x-request-id", ctx.request_id.encode()))
        plan: Plan | None = None
        metrics.in_flight.inc()
        try:
            snapshot = self.snapshots.current
            principal = authenticate(
                presented_key(scope["headers"]), snapshot, settings.api_key_pepper
            )
            ctx.principal = principal
            require_scope(principal)
            raw = await _read_body(scope, receive, settings.max_body_bytes, settings.body_timeout)
            if principal.org.get("log_prompts"):
                prompt_log.info(
                    "request %s body: %s", ctx.request_id, raw.decode("utf-8", "replace")
                )
            try:
                plan = plan_request(endpoint, raw, principal, snapshot, settings)
            finally:
                model = plan.alias if plan is not None else _requested_model(raw)
                ctx.model = model
                ctx.model_label = model if model in snapshot.models else "unknown"
            await self._admit(ctx, principal, plan)
            if not plan.routes and snapshot.models[plan.alias].get("cold_start"):
                plan = await self._hold_for_replica(ctx, plan, raw, principal, receive)
            affinity = (
                affinity_key_for(plan, settings.affinity_prefix_chars)
                if self.router.uses_affinity(plan.alias)
                else None
            )
            blocks = (
                prompt_blocks(plan, settings.prefix_block_chars, settings.prefix_max_blocks)
                if self.router.strategy == "cache-aware" and affinity is None
                else ()
            )
            await services.proxy.forward(ctx, plan, raw, affinity, send, receive, blocks)
        except GatewayError as err:
            ctx.status = err.status
            ctx.error = err.code
            if err.status == 429:
                metrics.limit_refusals.labels(
                    _org_label(ctx.principal), err.reason, err.level or "none"
                ).inc()
            elif err.status < 500:
                metrics.policy_refusals.labels(err.code).inc()
            if not ctx.response_started:
                await _send_error(send, err, ctx.response_headers + err.headers)
        except _ClientGone:
            ctx.status = 499
            ctx.error = "client_disconnected"
        except ClientWriteTimeout:
            # Everything of this request is released below; the server closes the
            # connection because the response never completed.
            log.warning(
                "request %s: client stopped reading for %g s; dropped",
                ctx.request_id,
                settings.write_timeout,
            )
            ctx.status = 499
            ctx.error = "client_write_timeout"
        except Exception:
            log.exception("request %s failed", ctx.request_id)
            ctx.status = 500
            ctx.error = "internal_error"
            if not ctx.response_started:
                await _send_error(
                    send,
                    GatewayError(
                        500,
                        f"The gateway failed to handle this request (request id {ctx.request_id}).",
                        code="internal_error",
                    ),
                    ctx.response_headers,
                )
        finally:
            metrics.in_flight.dec()
            await self._finish(ctx, plan)

    async def _admit(self, ctx: RequestContext, principal: Principal, plan: Plan) -> None:
        """Admit the request against its limits; what it holds goes on ``ctx`` (settled
        when the request ends, whatever happens after)."""
        services = self.services
        assert services is not None
        subjects = [
            Subject(level, sid, lim, model)
            for level, sid, lim, model in level_limits(principal, plan.alias)
        ]
        # This request's own name in the concurrency sets and the settle guard: this
        # process's random id and a sequence number, unique even when clients reuse
        # request ids, and short (sets of in-flight requests are searched by member).
        member = f"{self.instance}:{next(self._sequence):x}"
        if not has_admission_limits(subjects):
            ctx.reservation = services.limiter.unlimited(subjects, member)
            return
        try:
            reservation = await self._admit_budgeted(ctx, subjects, member, plan)
        except LimitsUnavailable as exc:
            self.metrics.redis_errors.labels("admit").inc()
            mode = principal.org.get("limits_fail_mode") or self.settings.limits_fail_mode
            if mode == "open":
                # This process's share of each limit, kept in memory (429 beyond it).
                ctx.local_reservation = services.local_limits.admit(subjects, plan.reserve_tokens)
                log.warning(
                    "request %s admitted against this process's share of its limits "
                    "(limits fail open): Redis unreachable: %s",
                    ctx.request_id,
                    exc,
                )
                return
            log.error("request %s refused: limits unavailable: %s", ctx.request_id, exc)
            raise GatewayError(
                503,
                "Rate limits and budgets cannot be checked right now (limit store "
                "unreachable), so the request was refused. Retry shortly.",
                code="limits_unavailable",
                headers=[(b"retry-after", b"1")],
            ) from None
        ctx.reservation = reservation
        ctx.response_headers.extend(reservation.headers)
        if any(has_conc for _, _, has_conc in reservation.levels):
            ctx.renew_slot = lambda: services.limiter.renew_slot(reservation)

    async def _admit_budgeted(
        self, ctx: RequestContext, subjects: list[Subject], member: str, plan: Plan
    ) -> Reservation:
        """Admit with the estimate; a token budget holds the request's worst case. Near
        a budget (the worst case does not fit), the budgets hold at least the exact cost
        (the prompt counted by a replica) before the request goes out, so no estimate can
        overspend a budget."""
        limiter = self.services.limiter  # type: ignore[union-attr]
        if not has_budget(subjects) or plan.worst_tokens <= plan.reserve_tokens:
            return await limiter.admit(subjects, member, plan.reserve_tokens)
        reason = self._near_budgets.reason(subjects)
        if reason is None:
            try:
                return await limiter.admit(
                    subjects,
                    member,
                    plan.reserve_tokens,
                    budget_reserve=plan.worst_tokens,
                    floor=plan.completion_tokens + 1,
                )
            except NeedsExactCount as near:
                reason = near.reason
                self._near_budgets.mark(subjects[near.index].base, reason)
        self.metrics.prompt_counts.labels(reason).inc()
        # The count and the admission of the estimate (held exactly in the budgets too)
        # overlap: two round trips in the time of one. A count above the estimate tops the
        # budgets up before the request goes out, so what the budgets hold is never less
        # than the exact cost.
        counting = asyncio.ensure_future(
            count_prompt(self.services.proxy.client, plan)  # type: ignore[union-attr]
        )
        held: Reservation | None = None
        spent: GatewayError | None = None
        try:
            try:
                held = await limiter.admit(
                    subjects, member, plan.reserve_tokens, budget_reserve=None
                )
                ctx.reservation = held  # from here on, the request's end settles it
            except GatewayError as refused:
                if refused.reason not in BUDGET_LIMITS:
                    raise
                spent = refused
            counted = await counting
        finally:
            counting.cancel()
        if counted is None:
            # No replica could count: the body's size bounds the prompt (a token is at
            # least one byte of text).
            self.metrics.prompt_count_failures.inc()
            cost = max(plan.reserve_tokens, plan.body_bytes + plan.completion_tokens)
        else:
            cost = counted + plan.completion_tokens
            ctx.prompt_counted = counted
        try:
            if held is None:
                if cost >= plan.reserve_tokens:
                    assert spent is not None
                    raise spent
                # The estimate did not fit but the exact cost is smaller: admit that.
                return await limiter.admit(subjects, member, cost, budget_reserve=None)
            if cost > held.budget_reserved:
                await limiter.top_up(held, subjects, cost - held.budget_reserved)
            return held
        except GatewayError as refused:
            if refused.reason in BUDGET_LIMITS:
                # Spent: the next request's estimate admission refuses without a count
                # when not even its floor fits.
                self._near_budgets.forget(subjects)
            raise

    async def _finish(self, ctx: RequestContext, plan: Plan | None) -> None:
        ended = time.perf_counter()
        metrics = self.metrics
        principal = ctx.principal
        org_label = _org_label(principal)
        latency = ended - ctx.started
        try:
            metrics.requests.labels(org_label, ctx.model_label, ctx.endpoint, str(ctx.status)).inc()
            series = metrics.series(org_label, ctx.model_label, ctx.endpoint)
            if ctx.replica is not None:
                metrics.capacity_requests.labels(
                    org_label, _owner_label(principal, ctx.owner), ctx.model_label
                ).inc()
            series.latency.observe(latency)
            if ctx.first_byte_at is not None:
                series.ttft.observe(ctx.first_byte_at - ctx.started)
            if ctx.prompt_tokens or ctx.completion_tokens:
                series.tokens_in.inc(ctx.prompt_tokens)
                series.tokens_out.inc(ctx.completion_tokens)
            if ctx.upstream_sent_at is not None:
                overhead = ctx.upstream_sent_at - ctx.started
                if ctx.upstream_done_at is not None:
                    overhead += ended - ctx.upstream_done_at
                series.overhead.observe(overhead)
            if self.settings.access_log:
                access_log.info(
                    "%s %s org=%s model=%s status=%d replica=%s tokens=%d/%d latency_ms=%.1f%s",
                    ctx.request_id,
                    ctx.endpoint,
                    org_label,
                    ctx.model_label,
                    ctx.status,
                    ctx.replica or "-",
                    ctx.prompt_tokens,
                    ctx.completion_tokens,
                    latency * 1000,
                    f" error={ctx.error}" if ctx.error else "",
                )
        except Exception:  # metrics must never lose the usage event below
            log.exception("request %s: recording metrics failed", ctx.request_id)
        if principal is None or self.services is None:
            return  # unauthenticated: nobody to bill
        reservation: Reservation | None = ctx.reservation
        actual = ctx.prompt_tokens + ctx.completion_tokens
        if (
            reservation is not None
            and plan is not None
            and not plan.stream
            and ctx.status == 200
            and not ctx.usage_reported
        ):
            # A success the upstream did not count: keep the worst case reserved.
            actual = max(reservation.reserved, reservation.budget_reserved)
        event: contract.UsageEvent = {
            "schema": contract.USAGE_SCHEMA,
            "request_id": ctx.request_id,
            "ts": ctx.arrived_at,
            "org": principal.org_id,
            "team": principal.team_id,
            "key": principal.key_id,
            "user": principal.user,
            "model": ctx.model[:200],
            "endpoint": ctx.endpoint,
            "replica": ctx.replica,
            "owner": ctx.owner,
            "status": ctx.status,
            "prompt_tokens": ctx.prompt_tokens,
            "completion_tokens": ctx.completion_tokens,
            "latency_ms": round(latency * 1000, 3),
            "ttft_ms": None
            if ctx.first_byte_at is None
            else round((ctx.first_byte_at - ctx.started) * 1000, 3),
            "error": ctx.error,
        }
        if ctx.local_reservation is not None:
            self.services.local_limits.settle(ctx.local_reservation, actual)
        # Shielded: a cancelled request (server shutdown) must still be accounted for.
        await asyncio.shield(self.services.usage.record(event, reservation, actual))


_heap_settled = False


def _settle_heap() -> None:
    """After start-up: move everything alive now (modules, settings, connections) out of
    the garbage collector's sight, and collect young objects less often. A request makes
    a few dozen short-lived objects; with the default thresholds the collector ran every
    ~50 requests and every full pass walked the whole heap (pauses of 10-40 ms in
    ``bench/gateway_overhead.py``). Measured there: collector time per process from
    ~650 ms to ~15 ms over the run, with no pause above 5 ms. Once per process (an
    embedding process that starts several gateways freezes its heap once)."""
    global _heap_settled
    if _heap_settled:
        return
    _heap_settled = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def _read_body(scope: dict[str, Any], receive: Any, cap: int, timeout: float = 30.0) -> bytes:
    """The whole body, within ``timeout`` seconds (a 408 after: a client that trickles
    its body, or never finishes it, must not hold a request open)."""
    try:
        async with asyncio.timeout(timeout):
            return await _receive_body(scope, receive, cap)
    except TimeoutError:
        raise GatewayError(
            408,
            f"The request body was not received within {timeout:g} s.",
            code="request_timeout",
            headers=[(b"connection", b"close")],
        ) from None


async def _receive_body(scope: dict[str, Any], receive: Any, cap: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise GatewayError(
                    400, "Invalid Content-Length header.", code="invalid_request"
                ) from None
            if declared > cap:
                raise _too_large(cap)
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise _too_large(cap)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(cap: int) -> GatewayError:
    return GatewayError(
        413, f"The request body exceeds the limit of {cap} bytes.", code="request_too_large"
    )


def _method_not_allowed(allowed: str) -> GatewayError:
    return GatewayError(
        405,
        f"Method not allowed; use {allowed}.",
        code="method_not_allowed",
        headers=[(b"allow", allowed.encode())],
    )


def _requested_model(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else ""


def _owner_label(principal: Principal | None, owner: str | None) -> str:
    """The capacity owner as a bounded label: ``platform``, or the caller's own slug (an
    organization's replica serves nobody else; any other id is shown as it is)."""
    if owner is None:
        return "platform"
    if principal is not None and owner == principal.org_id:
        return _org_label(principal)
    return owner


def _org_label(principal: Principal | None) -> str:
    if principal is None:
        return "unknown"
    return principal.org.get("slug") or "unknown"


async def _send_json(
    send: Any, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *_JSON,
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Any, err: GatewayError, headers: list[tuple[bytes, bytes]]) -> None:
    body = err.body()
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [*_JSON, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None) -> Gateway:
    """The ASGI app; reads settings from the environment when none are given."""
    return Gateway(settings or Settings.from_env())
