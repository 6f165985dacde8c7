"""The usage ledger writer: reads gateway usage events from the Redis stream with a
consumer group and records them exactly once.

Exactly once = at-least-once delivery + an idempotent write: events of a batch are
inserted in one transaction with ``ON CONFLICT DO NOTHING`` on the unique request id,
together with the hourly rollup of the rows that insert returns as new
(``controlplane.quotas.rollup``), and acknowledged only after that commit. A consumer
that dies mid-batch leaves its events pending; on restart it first re-reads its own
pending entries, and any consumer claims entries that another, dead consumer left idle for
``claim_idle_ms``. Events that cannot be parsed are parked on a dead-letter stream
rather than blocking the group.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass

import redis

from controlplane.quotas.models import UsageRecord
from controlplane.quotas.reseed import seed_counters
from controlplane.quotas.rollup import record_usage
from gateway import contract

log = logging.getLogger(__name__)

DEAD_LETTER_STREAM = contract.USAGE_STREAM + ":dead"


def ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(contract.USAGE_STREAM, contract.USAGE_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _record(event: dict) -> UsageRecord:
    error = event.get("error") or ""
    return UsageRecord(
        request_id=str(event["request_id"])[:64],
        organization_id=event["org"],
        team_id=event.get("team") or None,
        api_key_id=event.get("key") or None,
        user_id=str(event.get("user") or "")[:64],
        model=str(event.get("model") or "")[:64],
        endpoint=str(event.get("endpoint") or "")[:32],
        replica=str(event.get("replica") or "")[:64],
        # Absent from events older than the field; not a uuid: a ValueError (dead letter).
        owner_id=uuid.UUID(str(event["owner"])) if event.get("owner") else None,
        status=int(event["status"]),
        prompt_tokens=max(0, int(event.get("prompt_tokens") or 0)),
        completion_tokens=max(0, int(event.get("completion_tokens") or 0)),
        latency_ms=float(event.get("latency_ms") or 0.0),
        ttft_ms=float(event["ttft_ms"]) if event.get("ttft_ms") is not None else None,
        error=str(error)[:64],
        occurred_at=dt.datetime.fromtimestamp(float(event["ts"]), tz=dt.UTC),
    )


@dataclass
class BatchResult:
    read: int = 0
    written: int = 0
    dead: int = 0


class LedgerConsumer:
    def __init__(
        self,
        client: redis.Redis,
        *,
        name: str | None = None,
        batch_size: int = 500,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.client = client
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self._stopping = False
        ensure_group(client)

    def _read(self, start: str, block: int | None) -> list[tuple[bytes, dict]]:
        response = self.client.xreadgroup(
            contract.USAGE_GROUP,
            self.name,
            {contract.USAGE_STREAM: start},
            count=self.batch_size,
            block=block,
        )
        return response[0][1] if response else []

    def _claim_abandoned(self) -> list[tuple[bytes, dict]]:
        _next, entries, *_ = self.client.xautoclaim(
            contract.USAGE_STREAM,
            contract.USAGE_GROUP,
            self.name,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=self.batch_size,
        )
        return [(entry_id, fields) for entry_id, fields in entries if fields]

    def process(self, entries: list[tuple[bytes, dict]]) -> BatchResult:
        result = BatchResult(read=len(entries))
        if not entries:
            return result
        records, dead = [], []
        for entry_id, fields in entries:
            raw = fields.get(b"event") or fields.get("event")
            try:
                event = json.loads(raw)
                records.append(_record(event))
            except (TypeError, ValueError, KeyError) as exc:
                dead.append((entry_id, raw, repr(exc)))
        # The ledger rows and their hourly rollup commit together, counted from the
        # rows the insert reports as new: a replayed entry adds nothing to either.
        result.written = record_usage(records)
        for entry_id, raw, reason in dead:
            self.client.xadd(
                DEAD_LETTER_STREAM, {"event": raw or b"", "reason": reason, "id": entry_id}
            )
            log.error("usage entry %s parked on %s: %s", entry_id, DEAD_LETTER_STREAM, reason)
        result.dead = len(dead)
        # Only now, with the rows committed, may the stream forget these entries.
        self.client.xack(contract.USAGE_STREAM, contract.USAGE_GROUP, *[e for e, _ in entries])
        return result

    def run_once(self, *, block: bool = True) -> BatchResult:
        """One step: own pending entries first, then abandoned ones, then new ones."""
        entries = self._read("0", None)
        if not entries:
            entries = self._claim_abandoned()
        if not entries:
            entries = self._read(">", self.block_ms if block else None)
        return self.process(entries)

    def run_forever(self) -> None:
        def stop(signum, frame):
            self._stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("usage ledger consumer %s started", self.name)
        while not self._stopping:
            try:
                self.client.set(
                    contract.HEARTBEAT_LEDGER + self.name, time.time(), ex=contract.HEARTBEAT_TTL
                )
                # Redis is a cache of the ledger: counters it lost are rebuilt first.
                try:
                    seed_counters(self.client)
                except redis.RedisError:
                    raise
                except Exception:
                    # Usage keeps flowing into the ledger meanwhile; budgeted requests get
                    # 503 limits_unavailable until a later pass seeds the counters.
                    log.exception("could not re-seed the budget counters; retrying")
                result = self.run_once()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                ensure_group(self.client)  # a Redis that restarted empty
                continue
            except redis.ConnectionError as exc:
                log.warning("Redis unreachable (%s); retrying", exc)
                time.sleep(1)
                continue
            if result.read:
                log.info("recorded %d usage events (%d new)", result.read, result.written)
