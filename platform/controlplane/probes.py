"""Probes and metrics of the control plane, answered before anything else looks at the
request.

Kubernetes probes and Prometheus scrapes reach a pod by its IP address, which is not
in ``ALLOWED_HOSTS``: the first Django middleware that reads the host would answer 400.
``ProbeMiddleware`` is therefore the first middleware and answers three paths itself:

``GET /healthz``  200 while the process serves (liveness; no dependency is checked).
``GET /readyz``   200 when the database answers a query, Redis answers PING and no
                  migration is left unapplied; else 503 naming what failed. The result
                  is kept for ``READY_CACHE_SECONDS`` so probes never load the stores.
``GET /metrics``  Prometheus text, computed per scrape: nodes and replicas by state,
                  the usage stream's lag and pending entries, dead letters.

Nothing here needs a session, a user or CSRF; the paths carry no data of any tenant
(counts only). The ingress never routes ``/metrics``; a NetworkPolicy admits scrapes
from the monitoring namespace only.
"""

from __future__ import annotations

import logging
import threading
import time

from django.http import HttpResponse, JsonResponse

log = logging.getLogger(__name__)

READY_CACHE_SECONDS = 10.0
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")


class ReadinessCache:
    """The last readiness verdict and when it was taken (shared by the threads of a
    process); ``check`` computes a new one when the old one is older than ``max_age``."""

    def __init__(self, max_age: float = READY_CACHE_SECONDS):
        self.max_age = max_age
        self._lock = threading.Lock()
        self._taken_at = -float("inf")
        self._result: tuple[bool, dict[str, str]] = (False, {})
        self._migrated = False  # once every migration is applied, it stays so

    def reset(self) -> None:
        with self._lock:
            self._taken_at = -float("inf")
            self._migrated = False

    def check(self) -> tuple[bool, dict[str, str]]:
        with self._lock:
            if time.monotonic() - self._taken_at < self.max_age:
                return self._result
            checks = {
                "database": _check_database(),
                "redis": _check_redis(),
                "migrations": "ok" if self._migrated else _check_migrations(),
            }
            self._migrated = checks["migrations"] == "ok"
            self._result = (all(value == "ok" for value in checks.values()), checks)
            self._taken_at = time.monotonic()
            return self._result


readiness = ReadinessCache()


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _check_database() -> str:
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        # Django closes a broken connection when the request ends (request_finished).
        return _failure(exc)
    return "ok"


def _check_redis() -> str:
    from controlplane.redis import get_redis

    try:
        get_redis().ping()
    except Exception as exc:
        return _failure(exc)
    return "ok"


def _check_migrations() -> str:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception as exc:
        return _failure(exc)
    if plan:
        return f"{len(plan)} migration(s) not applied"
    return "ok"


def render_metrics() -> bytes:
    """Prometheus text of the platform's state, read from the database and Redis now."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(PlatformCollector())
    return generate_latest(registry)


class PlatformCollector:
    """Gauges computed at scrape time; a store that does not answer turns its series
    into ``platform_scrape_error{source}`` = 1 instead of failing the whole scrape."""

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        errors = GaugeMetricFamily(
            "platform_scrape_error",
            "1 when a source of these metrics failed during this scrape",
            labels=["source"],
        )
        try:
            yield from self._fleet()
            errors.add_metric(["database"], 0)
        except Exception as exc:
            log.warning("metrics: database not read: %s", exc)
            errors.add_metric(["database"], 1)
        try:
            yield from self._usage()
            errors.add_metric(["redis"], 0)
        except Exception as exc:
            log.warning("metrics: redis not read: %s", exc)
            errors.add_metric(["redis"], 1)
        yield errors

    def _fleet(self):
        from django.db.models import Count
        from prometheus_client.core import GaugeMetricFamily

        from controlplane.fleet.models import Node, NodeState, Replica, ReplicaState

        nodes = GaugeMetricFamily("platform_nodes", "Registered nodes by state", labels=["state"])
        counts = dict(Node.objects.values_list("state").annotate(n=Count("pk")))
        for state in NodeState.values:
            nodes.add_metric([state], counts.get(state, 0))
        replicas = GaugeMetricFamily(
            "platform_replicas", "Model replicas by state", labels=["state"]
        )
        counts = dict(Replica.objects.values_list("state").annotate(n=Count("pk")))
        for state in ReplicaState.values:
            replicas.add_metric([state], counts.get(state, 0))
        return [nodes, replicas]

    def _usage(self):
        import redis
        from prometheus_client.core import GaugeMetricFamily

        from controlplane.quotas.ledger import DEAD_LETTER_STREAM
        from controlplane.redis import get_redis
        from gateway import contract

        client = get_redis()
        lag = pending = 0
        length = client.xlen(contract.USAGE_STREAM)
        try:
            groups = client.xinfo_groups(contract.USAGE_STREAM)
        except redis.ResponseError:  # no stream yet: nothing was ever sent
            groups = []
        for group in groups:
            name = group.get("name")
            if name in (contract.USAGE_GROUP, contract.USAGE_GROUP.encode()):
                # "lag" (Redis >= 7): entries not yet delivered to the group.
                lag = group.get("lag") or 0
                pending = group.get("pending") or 0
        if not groups:
            lag = length  # no ledger consumer has ever read: everything waits
        return [
            GaugeMetricFamily(
                "platform_usage_stream_lag",
                "Usage events the ledger has not read yet",
                value=lag,
            ),
            GaugeMetricFamily(
                "platform_usage_stream_pending",
                "Usage events read by a ledger consumer but not yet acknowledged",
                value=pending,
            ),
            GaugeMetricFamily(
                "platform_usage_dead_letters",
                "Usage events parked on the dead-letter stream",
                value=client.xlen(DEAD_LETTER_STREAM),
            ),
        ]


class ProbeMiddleware:
    """First in ``MIDDLEWARE``: answers the probe paths before host validation."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        path = request.path_info
        if path not in PROBE_PATHS:
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            response = JsonResponse(
                {"error": {"type": "method_not_allowed", "message": "Use GET.", "fields": {}}},
                status=405,
            )
            response["Allow"] = "GET, HEAD"
            return response
        if path == "/healthz":
            return JsonResponse({"status": "ok"})
        if path == "/readyz":
            ready, checks = readiness.check()
            return JsonResponse(
                {"status": "ready" if ready else "not ready", "checks": checks},
                status=200 if ready else 503,
            )
        from prometheus_client import CONTENT_TYPE_LATEST

        return HttpResponse(render_metrics(), content_type=CONTENT_TYPE_LATEST)
