"""Writing audit events. Every mutating service function calls ``record_event`` inside
its own transaction, so the event commits exactly when the change does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from django.core.exceptions import ValidationError
from django.db import connection, models
from django.utils import timezone

from controlplane.audit.chain import append, json_safe
from controlplane.audit.context import current_request_context
from controlplane.audit.models import AuditEvent

# Never copied into the log, whatever the model.
_SECRET_FIELDS = {"secret_hash", "password", "api_key", "signature"}


class AuditActor(Protocol):
    def audit_identity(self) -> tuple[str, str, str]:
        """(actor_type, actor_id, label)"""


def field_values(instance: models.Model, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """The audit-relevant field values of ``instance`` (foreign keys as ids)."""
    values: dict[str, Any] = {}
    for field in instance._meta.concrete_fields:
        if fields is not None and field.name not in fields:
            continue
        if field.name in _SECRET_FIELDS or field.primary_key:
            continue
        values[field.name] = json_safe(getattr(instance, field.attname))
    return values


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """``{field: [before, after]}`` for the fields whose value changed."""
    keys = sorted(set(before) | set(after))
    return {k: [before.get(k), after.get(k)] for k in keys if before.get(k) != after.get(k)}


def reject_unknown_fields(fields: dict, allowed, message: str = "Unknown field.") -> None:
    """A 400 naming every field a service function does not take."""
    unknown = set(fields) - set(allowed)
    if unknown:
        raise ValidationError({name: message for name in sorted(unknown)})


def apply_changes(instance: models.Model, fields: dict, allowed) -> dict[str, list[Any]]:
    """Set ``fields`` (all of them in ``allowed``) on ``instance``, validate, save, and
    return the audit diff of what really changed."""
    reject_unknown_fields(fields, allowed, "This field cannot be changed.")
    before = field_values(instance, fields.keys())
    for name, value in fields.items():
        setattr(instance, name, value)
    instance.full_clean()
    instance.save()
    return diff(before, field_values(instance, fields.keys()))


def record_event(
    *,
    actor: AuditActor,
    action: str,
    target: models.Model | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    target_repr: str | None = None,
    organization_id: Any = None,
    changes: dict[str, Any] | None = None,
) -> AuditEvent:
    if not connection.in_atomic_block:
        raise RuntimeError("audit events must be written inside the change's transaction")
    actor_type, actor_id, actor_label = actor.audit_identity()
    context = current_request_context()
    if target is not None:
        target_type = target_type or target._meta.label_lower.split(".")[-1]
        target_id = target_id or str(target.pk)
        target_repr = target_repr if target_repr is not None else str(target)
    event = AuditEvent(
        occurred_at=timezone.now(),
        actor_type=actor_type,
        actor_id=str(actor_id or ""),
        actor_label=str(actor_label or "")[:200],
        organization_id=organization_id,
        action=action,
        target_type=target_type or "",
        target_id=str(target_id or ""),
        target_repr=(target_repr or "")[:200],
        changes=json_safe(changes or {}),
        request_id=context.request_id[:64],
        client_ip=context.client_ip,
    )
    return append(event)
