"""The in-memory routing/policy snapshot and the watcher that keeps it current.

The control plane writes the whole snapshot to ``contract.SNAPSHOT_KEY`` and publishes
its version on ``contract.SNAPSHOT_CHANNEL``. Each gateway process loads it at start-up,
reloads it on every notice, and polls cheaply (the version only) as a safety net for a
missed message. A snapshot is applied only if its version is newer than the current one,
or if it belongs to another epoch (the publisher starts one when it finds Redis ahead of
its database, e.g. after a restore: versions then start lower). If Redis is unreachable
the last snapshot stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway import contract
from gateway.errors import describe

log = logging.getLogger("gateway.snapshot")

# ``"version": 123`` as a top-level member; the lookbehind skips an escaped quote inside
# a string value. Publishers write ``schema``/``version`` first (insertion order) or last
# (sorted keys), so the head or tail of the document holds it.
_VERSION_RE = re.compile(rb'(?<!\\)"version"\s*:\s*(\d+)')
_EPOCH_RE = re.compile(rb'(?<!\\)"epoch"\s*:\s*"([^"\\]*)"')
_PEEK_BYTES = 160


class CompiledSnapshot:
    """A snapshot plus lookups derived from it, computed once per version."""

    __slots__ = (
        "_allowed_cache",
        "data",
        "epoch",
        "keys",
        "loaded_at",
        "models",
        "orgs",
        "teams",
        "version",
    )

    def __init__(self, data: contract.Snapshot, loaded_at: float | None = None) -> None:
        self.data = data
        self.version: int = int(data.get("version", 0))
        self.epoch: str = data.get("epoch") or ""
        self.keys: dict[str, contract.KeyEntry] = data.get("keys") or {}
        self.orgs: dict[str, contract.OrgEntry] = data.get("orgs") or {}
        self.teams: dict[str, contract.TeamEntry] = data.get("teams") or {}
        self.models: dict[str, contract.ModelEntry] = data.get("models") or {}
        self.loaded_at = loaded_at if loaded_at is not None else time.time()
        self._allowed_cache: dict[str, frozenset[str]] = {}

    def allowed_models(self, key: contract.KeyEntry) -> frozenset[str]:
        """Aliases this key may use: key.models ∩ org.models, or org.models if the key
        lists none."""
        cached = self._allowed_cache.get(key["id"])
        if cached is not None:
            return cached
        org = self.orgs.get(key["org"])
        org_models = frozenset(org.get("models") or ()) if org else frozenset()
        key_models = key.get("models") or ()
        allowed = org_models & frozenset(key_models) if key_models else org_models
        self._allowed_cache[key["id"]] = allowed
        return allowed


def parse_snapshot(raw: bytes | str) -> CompiledSnapshot:
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("snapshot is not a JSON object")
    schema = data.get("schema")
    if schema != contract.SNAPSHOT_SCHEMA:
        raise ValueError(f"unsupported snapshot schema {schema!r}")
    if not isinstance(data.get("version"), int):
        raise ValueError("snapshot has no integer version")
    if not isinstance(data.get("epoch", ""), str):
        raise ValueError("snapshot epoch is not a string")
    return CompiledSnapshot(data)  # type: ignore[arg-type]


def peek_version(head: bytes | None, tail: bytes | None) -> int | None:
    for part in (head, tail):
        if part:
            match = _VERSION_RE.search(part)
            if match:
                return int(match.group(1))
    return None


def peek_epoch(head: bytes | None, tail: bytes | None) -> str | None:
    """The epoch, when the head or tail of the document shows it (None: not seen)."""
    for part in (head, tail):
        if part:
            match = _EPOCH_RE.search(part)
            if match:
                return match.group(1).decode(errors="replace")
    return None


class SnapshotHolder:
    """Holds the current snapshot; ``apply`` only ever moves the version forward,
    except into another epoch."""

    def __init__(self) -> None:
        self.current = CompiledSnapshot(contract.empty_snapshot(), loaded_at=0.0)
        self.loaded = False
        self.listeners: list[Callable[[CompiledSnapshot], None]] = []

    def apply(self, snapshot: CompiledSnapshot) -> bool:
        new_epoch = snapshot.epoch != self.current.epoch
        if self.loaded and not new_epoch and snapshot.version <= self.current.version:
            return False
        if self.loaded and new_epoch:
            log.warning(
                "snapshot epoch changed from %r to %r (version %d -> %d)",
                self.current.epoch,
                snapshot.epoch,
                self.current.version,
                snapshot.version,
            )
        self.current = snapshot
        self.loaded = True
        for listener in self.listeners:
            listener(snapshot)
        log.info("applied snapshot version %d", snapshot.version)
        return True


class SnapshotWatcher:
    """Keeps a ``SnapshotHolder`` current from Redis (pub/sub plus a version poll)."""

    def __init__(
        self,
        redis: Any,
        holder: SnapshotHolder,
        poll_interval: float,
        pubsub_redis: Any | None = None,
    ) -> None:
        self.redis = redis
        # Pub/sub needs a client without a short read timeout: an idle subscription
        # is normal, not a failure.
        self.pubsub_redis = pubsub_redis or redis
        self.holder = holder
        self.poll_interval = poll_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        self._stopping = False
        self.last_error: str | None = None

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self.reload()
        self._tasks = [
            asyncio.create_task(self._listen(), name="snapshot-pubsub"),
            asyncio.create_task(self._poll(), name="snapshot-poll"),
        ]

    async def stop(self) -> None:
        # The flag matters: a cancellation that lands inside the Redis client can be
        # absorbed there, and the loops must still end.
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks = []

    async def reload(self) -> bool:
        """Fetch the whole snapshot and apply it if newer."""
        async with self._reload_lock:
            try:
                raw = await self.redis.get(contract.SNAPSHOT_KEY)
            except Exception as exc:
                self._note_error(f"cannot read snapshot: {describe(exc)}")
                raise
            if raw is None:
                if not self.holder.loaded:
                    self._note_error(f"no snapshot published at {contract.SNAPSHOT_KEY} yet")
                return False
            try:
                snapshot = parse_snapshot(raw)
            except ValueError as exc:
                self._note_error(f"ignoring malformed snapshot: {exc}")
                return False
            self.last_error = None
            return self.holder.apply(snapshot)

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s; serving snapshot version %d", message, self.holder.current.version)
        self.last_error = message

    async def _poll(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.poll_interval)
            try:
                if not self.holder.loaded:
                    await self.reload()
                    continue
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.getrange(contract.SNAPSHOT_KEY, 0, _PEEK_BYTES - 1)
                    pipe.getrange(contract.SNAPSHOT_KEY, -_PEEK_BYTES, -1)
                    head, tail = await pipe.execute()
                version = peek_version(head, tail)
                epoch = peek_epoch(head, tail)
                current = self.holder.current
                if (
                    version is None
                    or version > current.version
                    or (epoch is not None and epoch != current.epoch)
                ):
                    await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._note_error(f"snapshot poll failed: {describe(exc)}")

    async def _listen(self) -> None:
        while not self._stopping:
            pubsub = self.pubsub_redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(contract.SNAPSHOT_CHANNEL)
                # A notice may have been published while we were not subscribed.
                await self.reload()
                while not self._stopping:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        announced = int(message["data"])
                    except (TypeError, ValueError):
                        announced = None
                    # Not only newer: a new epoch announces a lower version.
                    if announced is None or announced != self.holder.current.version:
                        await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._note_error(f"snapshot subscription lost: {describe(exc)}")
                await asyncio.sleep(min(1.0, self.poll_interval))
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
