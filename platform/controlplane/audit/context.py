"""Per-request facts that the audit log records (request id, client address).

Set by ``controlplane.api.middleware.RequestContextMiddleware`` for HTTP requests;
management commands and tasks leave them empty.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    request_id: str = ""
    client_ip: str | None = None


_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "audit_request_context",
    default=RequestContext(),  # noqa: B039 - frozen dataclass, never mutated
)


def current_request_context() -> RequestContext:
    return _current.get()


@contextmanager
def request_context(request_id: str, client_ip: str | None) -> Iterator[RequestContext]:
    token = _current.set(RequestContext(request_id=request_id, client_ip=client_ip))
    try:
        yield _current.get()
    finally:
        _current.reset(token)
