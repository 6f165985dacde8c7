"""Usage events: exactly one per authenticated request, appended to the usage stream.

The event goes out in the same Redis call that settles the request's reservation
(``Limiter.settle``: token deltas, concurrency slot release, event). If Redis cannot be
reached, the whole settle goes into a bounded journal, kept in memory and in a file of
this process (``GATEWAY_JOURNAL_DIR``), and a background task replays it in order once
Redis answers again. The settle script remembers each settled request for a while, so a
replay of a settle that Redis had applied (its answer lost) changes nothing: token deltas,
slot releases and events each apply once. A process that starts takes over the journal
files of processes that are gone (their file lock is free) and replays them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from gateway import contract
from gateway.errors import describe
from gateway.limits import Limiter, Reservation
from gateway.metrics import Metrics

log = logging.getLogger("gateway.usage")


def encode_event(event: contract.UsageEvent) -> str:
    return orjson.dumps(event).decode()


class SettleJournal:
    """Settles waiting for Redis, in order: ``{"t": unix time, "args": settle args}``.

    Written to ``<dir>/settle-<pid>-<start>.jsonl`` (appended, then rewritten when
    entries are replayed), locked for as long as this process lives."""

    def __init__(self, directory: str | None, maximum: int) -> None:
        self.entries: deque[dict[str, Any]] = deque()
        self.maximum = maximum
        self.dropped = 0
        self._file = None
        self._dir = Path(directory) if directory else None
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            path = self._dir / f"settle-{os.getpid()}-{time.time_ns()}.jsonl"
            self._file = open(path, "ab+")  # noqa: SIM115 (held for the process's life)
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._adopt()

    def __len__(self) -> int:
        return len(self.entries)

    def _adopt(self) -> None:
        """Take over the journals of processes that are gone (their lock is free)."""
        assert self._dir is not None and self._file is not None
        for path in sorted(self._dir.glob("settle-*.jsonl")):
            if path.name == Path(self._file.name).name:
                continue
            try:
                handle = open(path, "rb")  # noqa: SIM115
            except FileNotFoundError:
                continue
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process's journal
                for line in handle.read().splitlines():
                    with contextlib.suppress(ValueError):
                        self._append(orjson.loads(line))
                path.unlink(missing_ok=True)
        if self.entries:
            log.warning("took over %d settles of a previous gateway process", len(self.entries))
        self._rewrite()

    def _append(self, entry: dict[str, Any]) -> None:
        if len(self.entries) >= self.maximum:
            self.entries.popleft()
            self.dropped += 1
            log.error("settle journal full (%d): dropped the oldest settle", self.maximum)
        self.entries.append(entry)

    def add(self, args: list[Any]) -> None:
        entry = {"t": time.time(), "args": args}
        dropped = self.dropped
        self._append(entry)
        if self._file is not None:
            if self.dropped != dropped:
                self._rewrite()
            else:
                self._file.write(orjson.dumps(entry) + b"\n")
                self._file.flush()
                os.fsync(self._file.fileno())

    def popleft(self) -> None:
        self.entries.popleft()

    def _rewrite(self) -> None:
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.write(b"".join(orjson.dumps(e) + b"\n" for e in self.entries))
        self._file.flush()
        os.fsync(self._file.fileno())

    def sync(self) -> None:
        """Make the file hold exactly the entries left (after a replay)."""
        self._rewrite()

    def oldest_age(self) -> float:
        return time.time() - self.entries[0]["t"] if self.entries else 0.0

    def close(self) -> None:
        if self._file is not None:
            path = Path(self._file.name)
            empty = not self.entries
            self._file.close()  # frees the lock: another process may take it over
            if empty:
                path.unlink(missing_ok=True)
            self._file = None


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
        journal_dir: str | None = None,
    ) -> None:
        self.redis = redis
        self.limiter = limiter
        self.metrics = metrics
        self.maxlen = maxlen
        self.buffer = SettleJournal(journal_dir, buffer_max)
        self.flush_interval = flush_interval
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._gauges()

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
            log.error(
                "exiting with %d settles not delivered (kept in the journal file for the "
                "next gateway process)",
                len(self.buffer),
            )
        self.buffer.close()

    async def record(
        self, event: contract.UsageEvent, reservation: Reservation | None, actual_tokens: int
    ) -> None:
        """Settle the reservation and append the event; journal the settle on failure."""
        args = self.limiter.settle_args(reservation, actual_tokens, encode_event(event))
        if self.buffer:
            # Keep the order: this settle waits behind the journal.
            self._journal(args, event["request_id"], "journal not empty")
            return
        try:
            await self.limiter.run_settle(args)
        except Exception as exc:
            self.metrics.redis_errors.labels("settle").inc()
            self._journal(args, event["request_id"], describe(exc))

    def _journal(self, args: list[Any], request_id: str, why: str) -> None:
        log.warning("settle of %s journaled (%s)", request_id, why)
        dropped = self.buffer.dropped
        self.buffer.add(args)
        if self.buffer.dropped != dropped:
            self.metrics.usage_dropped.inc(self.buffer.dropped - dropped)
        self._gauges()

    def _gauges(self) -> None:
        self.metrics.usage_buffered.set(len(self.buffer))
        self.metrics.journal_oldest.set(self.buffer.oldest_age())

    async def flush(self) -> int:
        """Replay journaled settles in order; return how many went out."""
        sent = 0
        try:
            while self.buffer:
                await self.limiter.run_settle(self.buffer.entries[0]["args"])
                self.buffer.popleft()
                sent += 1
        finally:
            if sent:
                self.buffer.sync()
                log.info("replayed %d journaled settles", sent)
            self._gauges()
        return sent

    async def _flush_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.flush_interval)
            self._gauges()
            if not self.buffer:
                continue
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("settle journal replay failed (will retry): %s", describe(exc))
