"""Celery tasks of the audit log (queue ``default``)."""

from __future__ import annotations

from celery import shared_task

from controlplane.audit import checkpoints


@shared_task(name="audit.checkpoint", ignore_result=True)
def checkpoint() -> str:
    """Sign the chain's head (beat runs it every AUDIT_CHECKPOINT_INTERVAL_SECONDS when
    a signing key is set). Idempotent: an unchanged head is not signed twice."""
    return checkpoints.checkpoint_if_changed()
