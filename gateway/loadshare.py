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
from gateway.resp import LuaScript, ScriptClient
from gateway.routing import Router

log = logging.getLogger("gateway.loadshare")


#: ARGV: own hash key, live-process set key, hash key prefix, this instance, now (epoch
#: seconds), expiry in seconds and in ms, then this process's (route id, in flight) pairs.
#: Writes this process's counts and liveness, drops processes silent past the expiry, and
#: returns the other live processes' counts as one flat list of route id, count pairs.
SYNC_LUA = r"""
local own, procs, prefix, me = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, ttl, ttl_ms = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
redis.call('DEL', own)
if #ARGV > 7 then
  redis.call('HSET', own, unpack(ARGV, 8))
  redis.call('PEXPIRE', own, ttl_ms)
end
redis.call('ZADD', procs, now, me)
redis.call('ZREMRANGEBYSCORE', procs, '-inf', now - ttl)
local out = {}
for _, name in ipairs(redis.call('ZRANGE', procs, 0, -1)) do
  if name ~= me then
    local counts = redis.call('HGETALL', prefix .. name)
    for i = 1, #counts do out[#out + 1] = counts[i] end
  end
end
return out
"""
SYNC = LuaScript(SYNC_LUA)


class LoadShare:
    def __init__(
        self, scripts: ScriptClient, router: Router, instance: str, interval: float
    ) -> None:
        self.scripts = scripts
        self.router = router
        self.instance = instance
        self.interval = interval
        self.ttl_ms = max(1000, int(interval * 5000))
        self.key = contract.INFLIGHT_PREFIX + instance
        self._task: asyncio.Task[None] | None = None
        self._last_ok = time.monotonic()

    async def sync_once(self) -> None:
        """One exchange, one script call on the gateway's lean Redis connection (the
        live processes: a sorted set scored by their last exchange, so nothing scans
        the keyspace)."""
        args: list[Any] = [
            self.key,
            contract.INFLIGHT_PROCESSES,
            contract.INFLIGHT_PREFIX,
            self.instance,
            repr(time.time()),
            self.ttl_ms / 1000,
            self.ttl_ms,
        ]
        for rid, health in self.router.health.items():
            if health.outstanding > 0:
                args += [rid, health.outstanding]
        flat = await self.scripts.run(SYNC, [], args)
        others: dict[str, int] = {}
        for index in range(0, len(flat) - 1, 2):
            rid, count = flat[index], flat[index + 1]
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
