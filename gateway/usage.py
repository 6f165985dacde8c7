"""Usage events: exactly one per authenticated request, appended to the usage stream.

The event goes out in the same Redis call that settles the request's reservation
(``Limiter.settle``). If Redis is unreachable the event waits in a bounded in-memory
buffer and a background task appends it once Redis answers again; the ledger
deduplicates on ``request_id``, so a retried append is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import orjson

from gateway import contract
from gateway.limits import Limiter, Reservation
from gateway.metrics import Metrics

log = logging.getLogger("gateway.usage")

_FLUSH_BATCH = 500


def encode_event(event: contract.UsageEvent) -> str:
    return orjson.dumps(event).decode()


class UsageRecorder:
    def __init__(
        self,
        redis: Any,
        limiter: Limiter,
        metrics: Metrics,
        *,
        maxlen: int,
        buffer_max: int,
        flush_interval: float = 1.0,
    ) -> None:
        self.redis = redis
        self.limiter = limiter
        self.metrics = metrics
        self.maxlen = maxlen
        self.buffer: deque[str] = deque()
        self.buffer_max = buffer_max
        self.flush_interval = flush_interval
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop(), name="usage-flush")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2.0)
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()
        if self.buffer:
            log.error("exiting with %d usage events not delivered", len(self.buffer))

    async def record(
        self, event: contract.UsageEvent, reservation: Reservation | None, actual_tokens: int
    ) -> None:
        """Settle the reservation and append the event; buffer the event on failure."""
        data = encode_event(event)
        try:
            await self.limiter.settle(reservation, actual_tokens, data)
        except Exception as exc:
            self.metrics.redis_errors.labels("settle").inc()
            log.warning("usage event %s buffered (Redis unreachable: %r)", event["request_id"], exc)
            self._buffer(data)

    def _buffer(self, data: str) -> None:
        if len(self.buffer) >= self.buffer_max:
            self.buffer.popleft()
            self.metrics.usage_dropped.inc()
            log.error("usage buffer full (%d): dropped the oldest event", self.buffer_max)
        self.buffer.append(data)
        self.metrics.usage_buffered.set(len(self.buffer))

    async def flush(self) -> int:
        """Append buffered events; return how many went out."""
        sent = 0
        while self.buffer:
            batch = [self.buffer[i] for i in range(min(_FLUSH_BATCH, len(self.buffer)))]
            async with self.redis.pipeline(transaction=False) as pipe:
                for data in batch:
                    pipe.xadd(
                        contract.USAGE_STREAM,
                        {"event": data},
                        maxlen=self.maxlen,
                        approximate=True,
                    )
                await pipe.execute()
            for _ in batch:
                self.buffer.popleft()
            sent += len(batch)
            self.metrics.usage_buffered.set(len(self.buffer))
        if sent:
            log.info("delivered %d buffered usage events", sent)
        return sent

    async def _flush_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.flush_interval)
            if not self.buffer:
                continue
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("usage flush failed: %r", exc)
