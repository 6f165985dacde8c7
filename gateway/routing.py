"""Choose the upstream route of a request.

Three strategies:

* cache-aware (default): each healthy route is scored by its expected prefix-cache
  match and its load together. The match comes from a gateway-side index of the
  prompt blocks recently sent to each route (``PrefixIndex``: chained hashes of
  fixed-size blocks of the prompt text, so a match is always a prefix match, as in
  the engines' own block caches). The load is the requests in flight to the route
  from every gateway process (this process's exact count plus the others' counts
  shared through Redis, see ``gateway.loadshare``). Bounded load: a route whose
  load has reached ``ceil((1 + load_bound) x mean)`` (mean counted with the new
  request) is only a fallback, so no replica takes more than its bound while another
  has room; a bound twice as loose, ``1 + 2 x load_bound``, applies to each route's
  recent request rate (decayed count of requests this process sent), so a hot prefix
  spreads even when its
  requests rarely overlap; among the routes under the bounds the longest match wins,
  then the lower load, then round-robin;
* least outstanding requests (setting): the route with the fewest requests in
  flight to it; ties go round-robin;
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
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
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


class PrefixIndex:
    """Which routes recently received which prompt blocks (bounded, least recently
    used blocks forgotten first).

    Blocks are chained hashes (``gateway.policy.prompt_blocks``): block ``i`` can only
    be equal when blocks ``0..i-1`` are too, so the leading run of blocks a route holds
    is the prefix it is expected to have cached.
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, dict[str, None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, blocks: Iterable[int], route_ids: Iterable[str]) -> dict[str, int]:
        """Leading blocks of ``blocks`` each route holds."""
        matched = dict.fromkeys(route_ids, 0)
        alive = set(matched)
        for block in blocks:
            holders = self._blocks.get(block)
            if holders is None:
                break
            alive.intersection_update(holders)
            if not alive:
                break
            for route_id in alive:
                matched[route_id] += 1
        return matched

    def record(self, blocks: Iterable[int], route_id: str) -> None:
        entries = self._blocks
        for block in blocks:
            holders = entries.get(block)
            if holders is None:
                holders = entries[block] = {}
            else:
                entries.move_to_end(block)
            holders[route_id] = None
        while len(entries) > self.capacity:
            entries.popitem(last=False)

    def forget_route(self, route_id: str) -> None:
        for holders in self._blocks.values():
            holders.pop(route_id, None)


@dataclass(slots=True)
class RouteHealth:
    outstanding: int = 0
    #: Requests sent recently, decaying with ``Router.recent_half_life`` (the rate
    #: the bound also applies to: requests that rarely overlap still spread).
    recent: float = 0.0
    recent_at: float = 0.0
    consecutive_failures: int = 0
    ejected_until: float = 0.0


class Router:
    def __init__(
        self,
        *,
        strategy: str = "cache-aware",
        affinity_models: tuple[str, ...] = (),
        eject_after_failures: int = 3,
        eject_seconds: float = 10.0,
        load_bound: float = 0.25,
        prefix_capacity: int = 50_000,
        recent_half_life: float = 2.0,
        clock=time.monotonic,
    ) -> None:
        self.strategy = strategy
        self.load_bound = load_bound
        self.recent_half_life = recent_half_life
        self.prefixes = PrefixIndex(prefix_capacity)
        #: Requests in flight per route from the other gateway processes (kept
        #: current by ``gateway.loadshare.LoadShare``; empty when there is none).
        self.remote_outstanding: dict[str, int] = {}
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

    def load(self, route_id: str) -> int:
        """Requests in flight to the route from every gateway process."""
        return self._h(route_id).outstanding + self.remote_outstanding.get(route_id, 0)

    def order(
        self,
        alias: str,
        routes: list[contract.Route],
        affinity_key: str | None,
        blocks: tuple[int, ...] = (),
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
        loads = {r["id"]: self.load(r["id"]) for r in rotated}
        if self.strategy != "cache-aware":
            return sorted(rotated, key=lambda r: loads[r["id"]])
        return self._cache_aware(rotated, loads, blocks)

    def load_cap(self, loads: Iterable[int], routes: int) -> int:
        """The most requests one route may hold while another has room: the mean
        (counting the request being placed) times ``1 + load_bound``, rounded up."""
        mean = (sum(loads) + 1) / routes
        return max(1, math.ceil((1.0 + self.load_bound) * mean - 1e-9))

    def _cache_aware(
        self, rotated: list[contract.Route], loads: dict[str, int], blocks: tuple[int, ...]
    ) -> list[contract.Route]:
        cap = self.load_cap(loads.values(), len(rotated))
        recent = {rid: self.recent(rid) for rid in loads}
        # The same bound on the recent request rate (not rounded up): a hot prefix
        # whose requests rarely overlap still spreads once its holder has taken more
        # than its share, and then both holders tie on the match.
        # Twice as loose as the in-flight bound: sessions spread unevenly over a few
        # replicas (3 and 2 on two) must not spill and lose their cache.
        recent_cap = (1.0 + 2 * self.load_bound) * (sum(recent.values()) + 1) / len(rotated)
        matched = self.prefixes.match(blocks, loads) if blocks else dict.fromkeys(loads, 0)
        # The rate bound is there to spread a prefix some replica holds; with no match
        # anywhere it would only put a request behind busier replicas: load alone decides.
        any_match = any(matched.values())
        # Sorted is stable: equal scores keep the round-robin rotation.
        return sorted(
            rotated,
            key=lambda r: (
                loads[r["id"]] >= cap,
                any_match and recent[r["id"]] >= recent_cap,
                -matched[r["id"]],
                loads[r["id"]],
            ),
        )

    def recent(self, route_id: str) -> float:
        """Requests sent to the route recently (exponentially decayed)."""
        health = self._h(route_id)
        if health.recent == 0.0:
            return 0.0
        age = max(0.0, self.clock() - health.recent_at)
        return health.recent * 0.5 ** (age / self.recent_half_life)

    def record_prompt(self, route_id: str, blocks: tuple[int, ...]) -> None:
        """Remember that ``route_id`` received (and will cache) these prompt blocks."""
        if blocks and self.strategy == "cache-aware":
            self.prefixes.record(blocks, route_id)

    def order_tiers(
        self,
        alias: str,
        tiers: list[list[contract.Route]],
        affinity_key: str | None,
        blocks: tuple[int, ...] = (),
    ) -> list[contract.Route]:
        """Candidates tier by tier: the healthy routes of each tier, ordered as
        ``order`` does, before those of the next; all of them ejected, panic mode over
        every route (own tier first among equals)."""
        now = self.clock()
        candidates: list[contract.Route] = []
        for tier in tiers:
            healthy = [r for r in tier if self._h(r["id"]).ejected_until <= now]
            candidates.extend(self.order(alias, healthy, affinity_key, blocks))
        if candidates:
            return candidates
        return self.order(alias, [r for tier in tiers for r in tier], affinity_key, blocks)

    def acquire(self, route_id: str) -> None:
        health = self._h(route_id)
        health.recent = self.recent(route_id) + 1.0
        health.recent_at = self.clock()
        health.outstanding += 1

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
