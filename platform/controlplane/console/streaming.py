"""Streamed responses that stream under ASGI too.

Served by ASGI (``controlplane.asgi``), Django reads a synchronous iterator into a list
before sending any of it, so an export would sit whole in memory and a chat answer
would arrive all at once. ``streamed`` hands it an asynchronous iterator instead that
pulls one chunk at a time in the request's own sync thread (database cursors and HTTP
connections stay on the thread that opened them). Under WSGI it passes the iterator on.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse

_END = object()


class _PulledInTurn:
    """An async iterator over a sync one; ``close`` reaches the sync one's ``close``."""

    def __init__(self, iterable) -> None:
        self.iterable = iterable
        self.iterator = iter(iterable)

    def __aiter__(self):
        return self._chunks()

    async def _chunks(self):
        pull = sync_to_async(next, thread_sensitive=True)
        while (chunk := await pull(self.iterator, _END)) is not _END:
            yield chunk

    def close(self) -> None:
        for thing in (self.iterator, self.iterable):
            close = getattr(thing, "close", None)
            if close is not None:
                close()


def streamed(request, iterable, **kwargs) -> StreamingHttpResponse:
    content = _PulledInTurn(iterable) if isinstance(request, ASGIRequest) else iterable
    return StreamingHttpResponse(content, **kwargs)
