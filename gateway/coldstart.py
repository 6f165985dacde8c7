"""Hold a request while its model's autoscaled deployment starts a replica.

A model whose snapshot entry says ``cold_start`` and that has no usable route right
now is not refused at once: the request waits (bounded per model) for a snapshot with
a route for it, while a demand signal in Redis (``contract.DEMAND_PREFIX + alias``,
refreshed while anyone waits) tells the control plane's autoscaler to scale up. A
streaming client gets nothing until then. A client that disconnects stops waiting at
once and leaves nothing behind; past the queue bound or the timeout the answer is 503
with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway import contract
from gateway.errors import GatewayError

log = logging.getLogger("gateway.coldstart")

#: Seconds between two refreshes of a model's demand signal while requests wait.
DEMAND_REFRESH_SECONDS = 5.0
DEMAND_TTL_SECONDS = 3600


class ClientGone(Exception):
    """The client disconnected while its request was held."""


class ColdStarts:
    def __init__(self, redis: Any, *, queue_limit: int, timeout: float) -> None:
        self.redis = redis
        self.queue_limit = queue_limit
        self.timeout = timeout
        self.waiting: dict[str, int] = {}
        self._changed = asyncio.Event()

    def snapshot_changed(self) -> None:
        """Wake every held request to look at the new snapshot."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def signal_demand(self, alias: str) -> None:
        with contextlib.suppress(Exception):  # Redis away: the timeout still applies
            await self.redis.set(
                contract.DEMAND_PREFIX + alias, repr(time.time()), ex=DEMAND_TTL_SECONDS
            )

    def _unavailable(self, alias: str, why: str) -> GatewayError:
        return GatewayError(
            503,
            f"No replica of '{alias}' is ready yet ({why}); retry shortly.",
            code="cold_start",
            headers=[(b"retry-after", b"30")],
        )

    async def hold(
        self,
        alias: str,
        ready: Callable[[], Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
    ) -> Any:
        """Wait until ``ready()`` returns something truthy (checked on every snapshot
        change) and return it."""
        if self.waiting.get(alias, 0) >= self.queue_limit:
            raise self._unavailable(alias, "too many requests are waiting for one")
        self.waiting[alias] = self.waiting.get(alias, 0) + 1
        gone = asyncio.ensure_future(_disconnected(receive))
        deadline = time.monotonic() + self.timeout
        try:
            await self.signal_demand(alias)
            signalled = time.monotonic()
            while True:
                result = ready()
                if result:
                    # The last word of the demand: served just now, so the new replica
                    # is not idle yet, whatever its first load report says.
                    await self.signal_demand(alias)
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._unavailable(alias, f"none started within {self.timeout:g} s")
                changed = asyncio.ensure_future(self._changed.wait())
                done, _ = await asyncio.wait(
                    {changed, gone},
                    timeout=min(left, DEMAND_REFRESH_SECONDS),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                changed.cancel()
                if gone in done:
                    raise ClientGone()
                if time.monotonic() - signalled >= DEMAND_REFRESH_SECONDS:
                    await self.signal_demand(alias)
                    signalled = time.monotonic()
        finally:
            gone.cancel()
            with contextlib.suppress(BaseException):
                await gone
            self.waiting[alias] -= 1
            if not self.waiting[alias]:
                del self.waiting[alias]


async def _disconnected(receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
