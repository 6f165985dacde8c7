"""Prometheus metrics of the gateway.

Several worker processes: ``prometheus_client``'s multiprocess mode. When
``PROMETHEUS_MULTIPROC_DIR`` is set (``python -m gateway`` sets it to a fresh temporary
folder when it starts more than one worker and none is given), every process writes its
samples to memory-mapped files there and ``/metrics`` on any worker aggregates all of
them, so a scrape sees the whole gateway whichever process answers it. Without the
variable the metrics live in a registry owned by the app.

Labels are bounded: organization slug, model alias (``unknown`` for names not in the
snapshot), status code, limit reason, route id, capacity owner (the caller's own slug or
``platform``: an organization's replicas serve only that organization). No key ids, no
free text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass(slots=True)
class RequestSeries:
    latency: Any
    ttft: Any
    tokens_in: Any
    tokens_out: Any
    overhead: Any


class Metrics:
    def __init__(self) -> None:
        self._series: dict[tuple[str, str, str], RequestSeries] = {}
        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode the samples go to files and a fresh registry with a
        # MultiProcessCollector reads them per scrape; otherwise this registry holds them.
        self.registry = None if self.multiprocess else CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered, by organization, model and HTTP status.",
            ["org", "model", "endpoint", "status"],
            registry=reg,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time from request arrival to the end of the response.",
            ["org", "model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time from request arrival to the first byte of the upstream answer.",
            ["org", "model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.tokens = Counter(
            "gateway_tokens_total",
            "Tokens counted by the upstreams, by direction (prompt = in, completion = out).",
            ["org", "model", "direction"],
            registry=reg,
        )
        self.limit_refusals = Counter(
            "gateway_limit_refusals_total",
            "Requests refused by a limit, by reason and level.",
            ["org", "reason", "level"],
            registry=reg,
        )
        self.prompt_counts = Counter(
            "gateway_prompt_counts_total",
            "Prompts counted exactly before admission because the request's worst case did "
            "not fit a token budget, by budget.",
            ["reason"],
            registry=reg,
        )
        self.prompt_count_failures = Counter(
            "gateway_prompt_count_failures_total",
            "Prompts no replica could count; the body's size bounded them instead.",
            registry=reg,
        )
        self.policy_refusals = Counter(
            "gateway_policy_refusals_total",
            "Requests refused before any upstream call, by error code.",
            ["code"],
            registry=reg,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Failed upstream attempts, by route and kind.",
            ["route", "kind"],
            registry=reg,
        )
        self.capacity_requests = Counter(
            "gateway_capacity_requests_total",
            "Requests sent upstream, by calling organization, owner of the capacity that "
            "served them (the organization's slug, or 'platform' for platform deployments "
            "and catalog upstreams) and model.",
            ["org", "owner", "model"],
            registry=reg,
        )
        self.route_ejections = Counter(
            "gateway_route_ejections_total",
            "Routes ejected after consecutive failures.",
            ["route"],
            registry=reg,
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Requests being served now.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time the gateway itself spends on a request: before the upstream request "
            "is sent plus after the upstream's last byte.",
            ["endpoint"],
            buckets=OVERHEAD_BUCKETS,
            registry=reg,
        )
        self.redis_errors = Counter(
            "gateway_redis_errors_total",
            "Redis operations that failed, by operation.",
            ["op"],
            registry=reg,
        )
        self.usage_buffered = Gauge(
            "gateway_usage_events_buffered",
            "Settles (token deltas, slot release, usage event) in the journal while Redis "
            "is unreachable: the journal's depth.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.journal_oldest = Gauge(
            "gateway_settle_journal_oldest_seconds",
            "Age of the oldest settle in the journal (0 when empty).",
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.usage_dropped = Counter(
            "gateway_usage_events_dropped_total",
            "Settles dropped (oldest first) because the journal was full.",
            registry=reg,
        )
        self.snapshot_version = Gauge(
            "gateway_snapshot_version",
            "Version of the snapshot in force.",
            registry=reg,
            multiprocess_mode="liveall",
        )

    def series(self, org: str, model: str, endpoint: str) -> RequestSeries:
        """The per-(org, model, endpoint) children, looked up once and kept (label sets
        are bounded, so the cache is too)."""
        key = (org, model, endpoint)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = RequestSeries(
                latency=self.latency.labels(org, model, endpoint),
                ttft=self.ttft.labels(org, model, endpoint),
                tokens_in=self.tokens.labels(org, model, "in"),
                tokens_out=self.tokens.labels(org, model, "out"),
                overhead=self.overhead.labels(endpoint),
            )
        return found

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.registry
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def process_exit(self) -> None:
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())
