"""Choose the upstream route of a request.

Two strategies, both per process:

* least outstanding requests (default): the route with the fewest requests this
  process has in flight to it; ties go round-robin;
* affinity (setting, or per model): rendezvous hashing on the request's ``user`` or
  on its prompt prefix, so repeated prefixes land on the same replica and its prefix
  cache; adding or removing a route only moves the keys that route owned.

A route that fails (connect error, 5xx, timeout) ``eject_after_failures`` times in a
row is ejected for ``eject_seconds``; ejected routes are tried only when every route
is ejected (panic mode), so a single flaky replica cannot take a model offline.

Routes come in tiers (``order_tiers``): an organization's own replicas first, then the
platform capacity shared with it, which is used only when no own route is healthy (and
as the next candidates when every own one fails).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass

from gateway import contract


def rendezvous_score(key: str, route_id: str) -> int:
    digest = hashlib.blake2b(
        key.encode("utf-8", "surrogatepass") + b"\x00" + route_id.encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(key: str, routes: list[contract.Route]) -> list[contract.Route]:
    """Routes ordered by highest random weight for ``key`` (first = owner)."""
    return sorted(routes, key=lambda r: rendezvous_score(key, r["id"]), reverse=True)


@dataclass(slots=True)
class RouteHealth:
    outstanding: int = 0
    consecutive_failures: int = 0
    ejected_until: float = 0.0


class Router:
    def __init__(
        self,
        *,
        strategy: str = "least-outstanding",
        affinity_models: tuple[str, ...] = (),
        eject_after_failures: int = 3,
        eject_seconds: float = 10.0,
        clock=time.monotonic,
    ) -> None:
        self.strategy = strategy
        self.affinity_models = frozenset(affinity_models)
        self.eject_after_failures = eject_after_failures
        self.eject_seconds = eject_seconds
        self.clock = clock
        self.health: dict[str, RouteHealth] = {}
        self._rr = itertools.count()

    def _h(self, route_id: str) -> RouteHealth:
        health = self.health.get(route_id)
        if health is None:
            health = self.health[route_id] = RouteHealth()
        return health

    def uses_affinity(self, alias: str) -> bool:
        return self.strategy == "affinity" or alias in self.affinity_models

    def order(
        self, alias: str, routes: list[contract.Route], affinity_key: str | None
    ) -> list[contract.Route]:
        """Candidate routes in the order to try them."""
        if not routes:
            return []
        now = self.clock()
        healthy = [r for r in routes if self._h(r["id"]).ejected_until <= now]
        if not healthy:  # panic mode: all ejected, try the ones back soonest first
            return sorted(routes, key=lambda r: self._h(r["id"]).ejected_until)
        if affinity_key is not None and self.uses_affinity(alias):
            return rendezvous_order(affinity_key, healthy)
        if len(healthy) == 1:
            return healthy
        start = next(self._rr) % len(healthy)
        rotated = healthy[start:] + healthy[:start]
        return sorted(rotated, key=lambda r: self._h(r["id"]).outstanding)

    def order_tiers(
        self, alias: str, tiers: list[list[contract.Route]], affinity_key: str | None
    ) -> list[contract.Route]:
        """Candidates tier by tier: the healthy routes of each tier, ordered as
        ``order`` does, before those of the next; all of them ejected, panic mode over
        every route (own tier first among equals)."""
        now = self.clock()
        candidates: list[contract.Route] = []
        for tier in tiers:
            healthy = [r for r in tier if self._h(r["id"]).ejected_until <= now]
            candidates.extend(self.order(alias, healthy, affinity_key))
        if candidates:
            return candidates
        return self.order(alias, [r for tier in tiers for r in tier], affinity_key)

    def acquire(self, route_id: str) -> None:
        self._h(route_id).outstanding += 1

    def release(self, route_id: str) -> None:
        health = self._h(route_id)
        health.outstanding = max(0, health.outstanding - 1)

    def record_success(self, route_id: str) -> None:
        health = self._h(route_id)
        health.consecutive_failures = 0
        health.ejected_until = 0.0

    def record_failure(self, route_id: str) -> bool:
        """Count a failure; return True if the route is now ejected."""
        health = self._h(route_id)
        health.consecutive_failures += 1
        if health.consecutive_failures >= self.eject_after_failures:
            health.ejected_until = self.clock() + self.eject_seconds
            health.consecutive_failures = 0
            return True
        return False

    def is_ejected(self, route_id: str) -> bool:
        return self._h(route_id).ejected_until > self.clock()
