"""Approximate limits kept in this process while Redis cannot be reached (fail-open).

Each process allows ``share`` of every limit (at least 1): with ``share`` set to one over
the number of gateway processes, all of them together stay near the real limit. The
windows and counters live in this process only (its own traffic while failing open):
nothing here is shared, exact or durable.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from gateway.limits import Subject, refusal


@dataclass(slots=True)
class LocalReservation:
    reserved: int
    #: (counter key, tokens) charged, and the subjects holding a concurrency slot.
    charged: list[str] = field(default_factory=list)
    slots: list[str] = field(default_factory=list)


class LocalLimiter:
    def __init__(self, share: float) -> None:
        self.share = share
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}
        self._in_flight: dict[str, int] = {}
        self._budget: dict[str, int] = {}

    def _cap(self, value: int) -> int:
        return max(1, math.floor(value * self.share))

    def reset(self) -> None:
        self._requests.clear()
        self._tokens.clear()
        self._in_flight.clear()
        self._budget.clear()

    def admit(self, subjects: list[Subject], reserve: int) -> LocalReservation:
        """Reserve like ``Limiter.admit`` against this process's share; 429 if over."""
        now = time.time()
        day = int(now) // 86400
        moment = time.gmtime(now)
        month = moment.tm_year * 100 + moment.tm_mon
        for s in subjects:
            lim, base = s.limits, s.base
            requests = self._requests.setdefault(base, deque())
            while requests and requests[0] <= now - 60:
                requests.popleft()
            tokens = self._tokens.setdefault(base, deque())
            while tokens and tokens[0][0] <= now - 60:
                tokens.popleft()
            checks = [
                ("rpm", len(requests), 1, 60),
                ("tpm", sum(t for _, t in tokens), reserve, 60),
                ("concurrency", self._in_flight.get(base, 0), 1, 1),
                ("daily_tokens", self._budget.get(f"{base}:d:{day}", 0), reserve, 60),
                ("monthly_tokens", self._budget.get(f"{base}:m:{month}", 0), reserve, 60),
            ]
            for name, used, need, retry in checks:
                if lim.get(name) is None:
                    continue
                cap = self._cap(int(lim[name]))
                if used + need > cap:
                    raise refusal(
                        name, s.level, cap, max(0, cap - used), retry, reserve, label=s.label
                    )
        res = LocalReservation(reserved=reserve)
        for s in subjects:
            base = s.base
            self._requests[base].append(now)
            self._tokens[base].append((now, reserve))
            if s.limits.get("concurrency") is not None:
                self._in_flight[base] = self._in_flight.get(base, 0) + 1
                res.slots.append(base)
            for key in (f"{base}:d:{day}", f"{base}:m:{month}"):
                self._budget[key] = self._budget.get(key, 0) + reserve
                res.charged.append(key)
        return res

    def settle(self, res: LocalReservation, actual: int) -> None:
        for base in res.slots:
            self._in_flight[base] = max(0, self._in_flight.get(base, 0) - 1)
        for key in res.charged:
            if key in self._budget:
                self._budget[key] += actual - res.reserved
