"""What the gateway learns about one request while serving it; the usage event, the
metrics and the access log are all written from this one record."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.auth import Principal


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: str
    arrived_at: float  # unix time
    started: float  # perf_counter at arrival
    principal: Principal | None = None
    model: str = ""  # the alias the client asked for
    model_label: str = "unknown"  # bounded label: alias if in the snapshot
    status: int = 500
    error: str | None = None
    replica: str | None = None
    owner: str | None = None  # Route.owner of ``replica``: None = platform capacity
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: What the request holds in the limits (a ``gateway.limits.Reservation``), settled
    #: when it ends.
    reservation: Any = None
    #: What the request holds in this process's approximate limits (failing open).
    local_reservation: Any = None
    #: The prompt as the replica counted it before admission (near a budget), if it did.
    prompt_counted: int | None = None
    usage_reported: bool = False
    first_byte_at: float | None = None  # perf_counter
    upstream_sent_at: float | None = None  # perf_counter
    upstream_done_at: float | None = None  # perf_counter
    response_started: bool = False
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: Extends the request's concurrency slots (set when it holds any).
    renew_slot: Callable[[], Awaitable[None]] | None = None
