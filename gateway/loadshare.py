"""Share requests-in-flight per route between gateway processes, through Redis.

Every ``interval`` each process writes its own in-flight counts to
``sap:gw:inflight:<instance>`` (a hash, expiring after a few intervals, so a process
that dies stops counting on its own), marks itself live in ``sap:gw:inflight-processes``
and reads the other live processes' hashes into
``Router.remote_outstanding``. Nothing of this is on the request path: the router adds
its own exact count to the others' last known counts. If Redis is unreachable the
others' counts are dropped after the expiry and routing falls back to this process's
view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from gateway import contract
from gateway.errors import describe
from gateway.routing import Router

log = logging.getLogger("gateway.loadshare")


class LoadShare:
    def __init__(self, redis: Any, router: Router, instance: str, interval: float) -> None:
        self.redis = redis
        self.router = router
        self.instance = instance
        self.interval = interval
        self.ttl_ms = max(1000, int(interval * 5000))
        self.key = contract.INFLIGHT_PREFIX + instance
        self._task: asyncio.Task[None] | None = None
        self._last_ok = time.monotonic()

    async def sync_once(self) -> None:
        mine = {rid: h.outstanding for rid, h in self.router.health.items() if h.outstanding > 0}
        now = time.time()
        ttl = self.ttl_ms / 1000
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key)
        if mine:
            pipe.hset(self.key, mapping=mine)
            pipe.pexpire(self.key, self.ttl_ms)
        # The live processes: a sorted set scored by their last exchange, so nothing
        # scans the keyspace; members silent past the expiry are dropped.
        pipe.zadd(contract.INFLIGHT_PROCESSES, {self.instance: now})
        pipe.zremrangebyscore(contract.INFLIGHT_PROCESSES, "-inf", now - ttl)
        pipe.zrange(contract.INFLIGHT_PROCESSES, 0, -1)
        members = (await pipe.execute())[-1]
        others: dict[str, int] = {}
        names = [m.decode() if isinstance(m, bytes) else m for m in members]
        names = [n for n in names if n != self.instance]
        if names:
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(contract.INFLIGHT_PREFIX + name)
            for counts in await pipe.execute():
                for rid, count in (counts or {}).items():
                    rid = rid.decode() if isinstance(rid, bytes) else rid
                    with contextlib.suppress(ValueError):
                        others[rid] = others.get(rid, 0) + max(0, int(count))
        self.router.remote_outstanding = others
        self._last_ok = time.monotonic()

    async def _run(self) -> None:
        while True:
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep routing on what is known
                if time.monotonic() - self._last_ok > self.ttl_ms / 1000:
                    self.router.remote_outstanding = {}
                log.debug("load sharing failed: %s", describe(exc))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.redis.delete(self.key)
            await self.redis.zrem(contract.INFLIGHT_PROCESSES, self.instance)
