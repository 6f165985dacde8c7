"""Hashing, appending and verifying the audit chain."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import connection

from controlplane.audit.models import AuditEvent

GENESIS_HASH = "0" * 64
# Any constant: the key of the PostgreSQL advisory lock that serialises appends.
_APPEND_LOCK_KEY = 0x5A1D17


def json_safe(value: Any) -> Any:
    """Turn a field value into plain JSON types whose text survives a database round trip."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [json_safe(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _canonical_fields(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "occurred_at": event.occurred_at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "actor_label": event.actor_label,
        "organization_id": str(event.organization_id) if event.organization_id else None,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "target_repr": event.target_repr,
        "changes": event.changes,
        "request_id": event.request_id,
        "client_ip": event.client_ip or None,
        "prev_hash": event.prev_hash,
    }


def compute_hash(event: AuditEvent) -> str:
    canonical = json.dumps(
        _canonical_fields(event), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def append(event: AuditEvent) -> AuditEvent:
    """Give ``event`` the next sequence number and its hash, and insert it.

    Must run inside the caller's transaction: the event commits or rolls back with
    the change it describes, and the sequence stays gapless.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_APPEND_LOCK_KEY])
    head = AuditEvent.objects.order_by("-seq").only("seq", "hash").first()
    event.seq = head.seq + 1 if head else 1
    event.prev_hash = head.hash if head else GENESIS_HASH
    event.hash = compute_hash(event)
    event.save(force_insert=True)
    return event


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    reason: str = ""


def verify_chain(batch_size: int = 2000) -> VerifyResult:
    """Walk the chain in order; report the first sequence number that does not hold."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    checked = 0
    queryset = AuditEvent.objects.order_by("seq")
    for event in queryset.iterator(chunk_size=batch_size):
        if event.seq != expected_seq:
            reason = (
                f"sequence jumps from {expected_seq - 1} to {event.seq}: "
                f"event {expected_seq} was deleted"
                if event.seq > expected_seq
                else f"unexpected sequence number {event.seq}"
            )
            return VerifyResult(False, checked, expected_seq - 1, prev_hash, expected_seq, reason)
        if event.prev_hash != prev_hash:
            return VerifyResult(
                False,
                checked,
                event.seq - 1,
                prev_hash,
                event.seq,
                f"event {event.seq} does not link to event {event.seq - 1} "
                "(inserted, deleted or reordered)",
            )
        if compute_hash(event) != event.hash:
            return VerifyResult(
                False,
                checked,
                event.seq - 1,
                prev_hash,
                event.seq,
                f"event {event.seq} was changed after it was written",
            )
        prev_hash = event.hash
        expected_seq += 1
        checked += 1
    return VerifyResult(True, checked, expected_seq - 1, prev_hash)
